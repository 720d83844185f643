"""Experiment: full fine-tuning vs LoRA r=4/8/16 (each lr selected on a validation split) vs few-shot prompting.

    .venv/bin/python tools/experiments/lora_vs_full.py --out docs/experiments

Domain task: TREC question classification (6 coarse labels; ../shared/data/trec, 5,452 train / 500 test).
Pipeline, all on CPU with nanoforge's own recipes:
1. a 1,024-id BPE tokenizer with ChatML specials, trained on tinyshakespeare + the TREC train questions;
2. a small GPT (4 layers, width 128) pretrained on the same unlabeled text (``pretrain.run``);
3. the labelled train set as chat JSONL ("Classify ...: question" -> "LABEL");
4. model selection, the same for every method: ``--val-n`` (500) seeded train questions are held out as a
   validation split (the fine-tunes never train on them); each method (full FT, LoRA r=4/8/16) trains once
   per lr of its sweep (``--full-lrs``, ``--lora-lrs``) at its final step count, and the run with the highest
   validation *accuracy* (the test metric's scoring) wins, validation loss breaking ties. The winner is the
   variant (no retraining); only winners and diagnostics are scored on the test set;
5. each run is one ``finetune.run`` in a fresh subprocess (so its peak RSS and CPU time are its own):
   full FT and LoRA (peft) r=4/8/16 on q/k/v/o/up/down projections, alpha = 2r, which also train the rows of
   the chat special tokens (``lora.trainable_tokens=special``: <|im_start|>, <|im_end|>, <|endoftext|>, never
   seen in pretraining), plus a control, ``frozen-rows-r16``: LoRA r=16 with those rows frozen
   (``lora.trainable_tokens=none``, plain LoRA), and a diagnostic, ``label-rows-r16``: LoRA r=16 that also
   trains the rows of the tokens the six labels are spelled with (``lora.trainable_tokens=<ids>``), both at
   the lr chosen for that rank, and a steps diagnostic, ``long-r<R>``: the best-validation LoRA rank at its
   chosen lr with ``--long-factor`` (3) times the steps. LoRA gets more steps than full FT (the usual
   allowance for its cheaper steps); steps, lr, CPU time are all in the table;
6. quality: accuracy on the 500 test questions, choosing the label whose tokens (plus end-of-turn) the model
   finds most likely after the prompt. The prompting baseline scores the base model the same way with six
   labelled examples (one per class) in the prompt, on a fixed seeded subset (``--prompt-n``, 100).

Reported per variant: trainable parameters, peak RSS, training-state memory (weights + grads + AdamW moments
of what trains), training tokens/s, CPU-seconds of the fine-tune, validation loss, test accuracy, and
where each fine-tune's loss sits (first label token / other label tokens / end of turn). Writes
``lora_vs_full.md``/``.png``/``.json`` into ``--out``. The base model and every fine-tuned model stay in
``--work`` (``out/lora_vs_full``, gitignored) with a ``manifest.json`` that ``prompting_vs_finetuning.py``
reads. ``--reuse-base`` skips tokenizer training and pretraining when ``--work`` already has a base (for
quick reruns; the reported timing is of a run without it). Reads ../shared/data only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
INSTRUCTION = "Classify the question type (ABBR, DESC, ENTY, HUM, LOC or NUM): "
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,up_proj,down_proj"
MANIFEST = "manifest.json"
VAL_SEED = 1  # the held-out validation questions: a seeded sample of the train file
CONTROL = "frozen-rows-r16"  # LoRA r=16 without trainable token rows: where LoRA stood before
LABEL_ROWS = "label-rows-r16"  # LoRA r=16 training the special tokens' rows and the label tokens' rows


def read_trec(name: str) -> list[tuple[str, str]]:
    """(coarse label, question) pairs; the files are ISO-8859-1."""
    lines = (DATA / "trec" / name).read_text(encoding="latin-1").splitlines()
    return [(ln.split(":", 1)[0], ln.split(" ", 1)[1]) for ln in lines if ln.strip()]


def split_train(val_n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, validation): ``val_n`` seeded questions of the TREC train file held out for model selection."""
    rows = read_trec("train_5500.label")
    held = set(random.Random(VAL_SEED).sample(range(len(rows)), val_n))
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def chat(question: str, label: str | None) -> list[dict[str, str]]:
    """The chat the fine-tuned models are trained on (and asked at test time)."""
    msgs = [{"role": "user", "content": INSTRUCTION + question}]
    return [*msgs, {"role": "assistant", "content": label}] if label else msgs


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def build_base(work: Path, pretrain_steps: int, threads: int) -> dict:
    """Tokenizer + pretrained base model in ``work/base`` (with tokenizer/ inside); returns its costs."""
    from nanoforge.core_model.checkpoint import load_model, save_model
    from nanoforge.tokenizer import train_bpe
    from nanoforge.tokenizer.chat import CHATML_SPECIALS, add_chat_template
    from nanoforge.trainer.config import load_config
    from nanoforge.trainer.prepare import prepare
    from nanoforge.trainer.pretrain import run

    t0, c0 = time.perf_counter(), cpu_seconds()
    for sub in ("text", "tok", "data", "pretrain", "base"):
        shutil.rmtree(work / sub, ignore_errors=True)
    text_dir = work / "text"
    text_dir.mkdir(parents=True)
    (text_dir / "shakespeare.txt").write_text((DATA / "tinyshakespeare" / "input.txt").read_text())
    (text_dir / "trec.txt").write_text("\n\n".join(q for _, q in read_trec("train_5500.label")))
    specials = ("<|endoftext|>", *CHATML_SPECIALS)
    tok = train_bpe(text_dir, vocab_size=1024, special_tokens=specials, num_workers=1, show_progress=False)
    tok = add_chat_template(tok, "chatml")
    tok.save(work / "tok")
    prepare([text_dir], work / "tok", work / "data", val_fraction=0.05, doc_split="paragraph")
    over = [
        f"data.dir={work / 'data'}",
        "model.vocab_size=null",
        "model.max_seq_len=768",  # room for the few-shot prompts of the prompting baselines
        "train.block_size=128",
        "train.batch_size=16",
        f"train.max_iters={pretrain_steps}",
        f"train.eval_interval={pretrain_steps}",
        f"train.threads={threads}",
        "train.device=cpu",
        "schedule.warmup_iters=30",
        f"checkpoint.interval={pretrain_steps}",
        "log.progress=false",
        "log.tensorboard=false",
        "optim.lr=2e-3",
    ]
    summary = run(load_config("shakespeare-char", over), work / "pretrain")
    base = work / "base"
    save_model(load_model(work / "pretrain" / "final"), base)
    tok.save(base / "tokenizer")
    cost = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "val_loss": summary["eval"]}
    (work / "base_cost.json").write_text(json.dumps(cost, default=str))
    return cost


@torch.no_grad()
def label_accuracy(
    model: torch.nn.Module,
    tok,
    test: list[tuple[str, str]],
    shots: list[dict],
    batch: int = 8,
    answers: dict[str, int] | None = None,
) -> float:
    """Share of test questions whose most likely label (sum of label-token log-probs) is right.

    ``batch`` questions go through one forward: 6 rows (one per label) each, right-padded. ``answers``, when
    given, counts how often each label was chosen.
    """
    from nanoforge.tokenizer.chat import render_chat

    end = tok.special_tokens["<|im_end|>"]
    label_ids = [[*tok.encode(lab), end] for lab in LABELS]
    model.eval()
    correct = 0
    for b in range(0, len(test), batch):
        chunk = test[b : b + batch]
        prompts = [
            render_chat(tok, [*shots, *chat(q, None)], add_generation_prompt=True).ids for _, q in chunk
        ]
        seqs = [p + ids for p in prompts for ids in label_ids]
        width = max(map(len, seqs))
        x = torch.tensor([s + [0] * (width - len(s)) for s in seqs])  # (n*6, T) right-padded
        logp = torch.log_softmax(model(x), dim=-1)  # (n*6, T, V)
        for i, (gold, _) in enumerate(chunk):
            scores = []
            for k, ids in enumerate(label_ids):
                pos = torch.arange(len(prompts[i]) - 1, len(prompts[i]) - 1 + len(ids))
                scores.append(float(logp[i * 6 + k, pos, torch.tensor(ids)].sum()))
            choice = LABELS[max(range(6), key=scores.__getitem__)]
            correct += choice == gold
            if answers is not None:
                answers[choice] = answers.get(choice, 0) + 1
    return correct / len(test)


def test_subset(n: int) -> list[tuple[str, str]]:
    """The first ``n`` of the 500 test questions after a seeded shuffle (all 500, in file order, if n >= 500)."""
    test = read_trec("TREC_10.label")
    return test if n >= len(test) else random.Random(0).sample(test, n)


def few_shot_examples(train: list[tuple[str, str]]) -> list[dict]:
    """One seeded example per class, as alternating user / assistant turns."""
    rng = random.Random(0)
    shots = []
    for lab in LABELS:
        q = rng.choice([q for g, q in train if g == lab])
        shots += chat(q, lab)
    return shots


def run_prompting(work: Path, n: int) -> dict:
    """6-shot prompting of the base model on a fixed subset of ``n`` test questions."""
    from nanoforge.core_model.checkpoint import load_model
    from nanoforge.tokenizer.hf import load_any_tokenizer

    tok = load_any_tokenizer(work / "base" / "tokenizer")
    t0 = time.perf_counter()
    subset = test_subset(n)
    shots = few_shot_examples(read_trec("train_5500.label"))
    acc = label_accuracy(load_model(work / "base"), tok, subset, shots)
    return {
        "variant": "prompting",
        "trainable": 0,
        "accuracy": acc,
        "n_test": len(subset),
        "eval_s": time.perf_counter() - t0,
    }


def run_finetune(
    name: str, work: Path, method: str, r: int, lr: float, steps: int, a: argparse.Namespace, tokens: str
) -> dict:
    """One fine-tune (called in its own process): train, then (unless a sweep run) test accuracy."""
    from nanoforge.core_model.checkpoint import load_model
    from nanoforge.tokenizer.hf import load_any_tokenizer
    from nanoforge.trainer.finetune import run
    from nanoforge.trainer.finetune_config import load_finetune_config

    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run (finetune refuses a dir with checkpoints)
    over = [
        f"base.model={work / 'base'}",
        f"data.train={work / 'train.jsonl'}",
        "data.val_fraction=0.05",
        "train.batch_size=16",
        "train.block_size=128",
        f"train.max_iters={steps}",
        f"train.eval_interval={steps}",
        "train.eval_iters=8",
        f"train.threads={a.threads}",
        "train.device=cpu",
        f"schedule.warmup_iters={max(steps // 10, 5)}",
        f"checkpoint.interval={steps}",
        "checkpoint.keep_last=1",
        "log.progress=false",
        "log.tensorboard=false",
        f"optim.lr={lr}",
        f"schedule.min_lr={lr / 10}",
        f"lora.r={max(r, 1)}",
        f"lora.alpha={2 * max(r, 1)}",
        "lora.dropout=0.0",
        f"lora.target_modules={LORA_TARGETS}",
        "lora.merge=true",  # RUN/final = base + adapter merged (what the Score RPC serves)
        f"lora.trainable_tokens={tokens}",  # special: the chat special tokens' rows train with the adapter
    ]
    cfg = load_finetune_config("sft-demo", over, method=method)
    c0 = cpu_seconds()
    summary = run(cfg, run_dir)
    train_cpu_s = cpu_seconds() - c0
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the final model / adapter is what is kept
    trainable = summary["trainable_params"]
    result = {
        "variant": name,
        "method": method,
        "rank": r,
        "lr": lr,
        "steps": steps,
        "trainable": trainable,
        "total": summary["total_params"],
        "train_state_mb": (summary["total_params"] * 4 + trainable * 12) / 2**20,  # fp32 w + grad + 2 moments
        "tokens_per_s": summary["tokens_per_s"],
        "train_s": summary["wall_s"],
        "train_cpu_s": train_cpu_s,
        "val_loss": summary["eval"].get("val_loss"),
        "final": str(run_dir / "final"),
        "adapter": summary.get("adapter"),
        "token_rows": token_rows(summary.get("adapter")),
    }
    tok = load_any_tokenizer(work / "base" / "tokenizer")
    model = load_model(run_dir / "final")
    val_answers: dict[str, int] = {}
    result["val_accuracy"] = label_accuracy(model, tok, split_train(a.val_n)[1], [], answers=val_answers)
    result["val_answers"] = dict(sorted(val_answers.items(), key=lambda kv: -kv[1]))
    if not a.sweep:  # selection runs are scored on the test set only if they win (in the parent)
        result.update(test_accuracy(model, tok, a.eval_n))
    return result


def test_accuracy(model: torch.nn.Module, tok, eval_n: int) -> dict:
    """``accuracy``, ``n_test`` and ``answers`` (label -> times chosen) on the test questions."""
    test = test_subset(eval_n)
    answers: dict[str, int] = {}
    acc = label_accuracy(model, tok, test, [], answers=answers)
    return {
        "accuracy": acc,
        "n_test": len(test),
        "answers": dict(sorted(answers.items(), key=lambda kv: -kv[1])),
    }


def label_row_ids(work: Path) -> list[int]:
    """The chat special tokens plus every token the six labels are spelled with (``LABEL_ROWS``'s rows)."""
    from nanoforge.tokenizer.hf import load_any_tokenizer

    tok = load_any_tokenizer(work / "base" / "tokenizer")
    specials = [tok.special_tokens[s] for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    return sorted({*specials, *(i for lab in LABELS for i in tok.encode(lab))})


def token_rows(adapter: str | None) -> list[int]:
    """The token ids whose rows an adapter trains (its ``trainable_token_indices``), [] for none / full FT."""
    if not adapter:
        return []
    layers = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("trainable_token_indices")
    return sorted({i for ids in (layers or {}).values() for i in ids})


def child(a: argparse.Namespace) -> None:
    """Entry of a variant subprocess: prints one ``RESULT {json}`` line."""
    torch.set_num_threads(a.threads)
    if a.variant == "prompting":
        result = run_prompting(a.work, a.prompt_n)
    else:
        result = run_finetune(a.variant, a.work, a.method, a.rank, a.lr, a.steps, a, a.trainable_tokens)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def spawn(a: argparse.Namespace, work: Path, jobs: list[dict]) -> list[dict]:
    """Run each job (``name`` plus optional method / r / lr / steps / sweep) in a fresh Python process,
    ``a.jobs`` at a time, and return their result dicts in job order."""

    def one(job: dict) -> dict:
        cmd = [sys.executable, __file__, "--variant", job["name"], "--work", str(work)]
        cmd += ["--threads", str(a.threads), "--eval-n", str(a.eval_n), "--prompt-n", str(a.prompt_n)]
        cmd += ["--val-n", str(a.val_n)]
        cmd += ["--method", job.get("method", "full"), "--rank", str(job.get("r", 0))]
        cmd += ["--lr", str(job.get("lr", 0.0)), "--steps", str(job.get("steps", 0))]
        cmd += ["--sweep"] if job.get("sweep") else []
        cmd += ["--trainable-tokens", job.get("tokens", a.trainable_tokens)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"variant {job['name']} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        result = json.loads(line.removeprefix("RESULT "))
        print(json.dumps({k: v for k, v in result.items() if k not in ("final", "adapter")}), flush=True)
        return result

    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        return list(pool.map(one, jobs))


@torch.no_grad()
def loss_breakdown(work: Path, finals: dict[str, str], n: int = 100) -> dict[str, dict[str, float]]:
    """Mean NLL (nats) of the gold answer's first label token, its other label tokens, and the end-of-turn
    token, per fine-tuned model (name -> final model dir), on ``n`` test questions: where a variant's loss
    sits, not which one wins."""
    from nanoforge.core_model.checkpoint import load_model
    from nanoforge.tokenizer.chat import render_chat
    from nanoforge.tokenizer.hf import load_any_tokenizer

    tok = load_any_tokenizer(work / "base" / "tokenizer")
    end = tok.special_tokens["<|im_end|>"]
    out = {}
    for name, final in finals.items():
        model = load_model(final).eval()
        nll: dict[str, list[float]] = {"first label token": [], "other label tokens": [], "end of turn": []}
        for gold, q in test_subset(n):
            prompt = render_chat(tok, chat(q, None), add_generation_prompt=True).ids
            answer = [*tok.encode(gold), end]
            logp = torch.log_softmax(model(torch.tensor([prompt + answer]))[0], dim=-1)  # (T, V)
            for j, t in enumerate(answer):
                key = "first label token" if j == 0 else "end of turn" if t == end else "other label tokens"
                nll[key].append(-float(logp[len(prompt) - 1 + j, t]))
        out[name] = {k: sum(v) / len(v) for k, v in nll.items()}
    return out


def prior_nll(n: int = 100) -> float:
    """NLL (nats) of the gold label's first token for a model that knows only the train label frequencies
    (each label starts with its own token), on the ``loss_breakdown`` questions: the no-question baseline."""
    counts: dict[str, int] = {}
    for label, _ in read_trec("train_5500.label"):
        counts[label] = counts.get(label, 0) + 1
    total = sum(counts.values())
    test = test_subset(n)
    return -sum(math.log(counts[gold] / total) for gold, _ in test) / len(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/experiments"), help="report directory")
    ap.add_argument(
        "--work", type=Path, default=Path("out/lora_vs_full"), help="models and data (gitignored)"
    )
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--full-steps", type=int, default=150, help="full fine-tuning steps")
    ap.add_argument("--full-lrs", default="3e-4,1e-3,3e-3,1e-2", help="full-FT lrs tried (selection sweep)")
    ap.add_argument(
        "--lora-steps", type=int, default=200, help="LoRA steps (each is cheaper than a full step)"
    )
    ap.add_argument("--lora-lrs", default="3e-3,1e-2,2e-2,4e-2", help="LoRA lrs tried at every rank")
    ap.add_argument("--val-n", type=int, default=500, help="train questions held out for model selection")
    ap.add_argument("--long-factor", type=int, default=3, help="steps multiple of the long-r<R> diagnostic")
    ap.add_argument("--ranks", default="4,8,16")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process")
    ap.add_argument("--jobs", type=int, default=1, help="variant processes at a time (sweep and variants)")
    ap.add_argument(
        "--eval-n", type=int, default=500, help="test questions for the fine-tunes (seeded subset)"
    )
    ap.add_argument("--prompt-n", type=int, default=100, help="test questions for 6-shot prompting")
    ap.add_argument("--reuse-base", action="store_true", help="keep --work/base if present (quick reruns)")
    ap.add_argument(
        "--trainable-tokens",
        default="special",
        help="lora.trainable_tokens of the LoRA variants (special | none)",
    )
    ap.add_argument("--control-rank", type=int, default=16, help=f"rank of {CONTROL} (0 = no control run)")
    # internal: run one variant in this process
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--lr", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report-only", action="store_true", help="re-render the report from --out's JSON")
    ap.add_argument(
        "--load-note", help="with --report-only: the load seen during the run (not recorded then)"
    )
    a = ap.parse_args()
    if a.variant:
        return child(a)
    if a.report_only:
        d = json.loads((a.out / "lora_vs_full.json").read_text())
        for k, v in d["args"].items():
            if k not in ("out", "report_only", "load_note"):
                setattr(a, k, Path(v) if k == "work" else v)
        return write_report(
            a.out, d["results"], d["sweep"], d["chosen"], a, d["base_cost"], d["reused_base"], d["total_s"],
            d["breakdown"],
        )  # fmt: skip
    for flag, value in (("--pretrain-steps", a.pretrain_steps), ("--full-steps", a.full_steps),
                        ("--lora-steps", a.lora_steps), ("--long-factor", a.long_factor)):  # fmt: skip
        if value < 1:
            raise SystemExit(f"error: {flag} must be >= 1, got {value}")
    if not 50 <= a.val_n <= 2000:
        raise SystemExit(f"error: --val-n must be in 50..2000, got {a.val_n}")
    try:
        full_lrs = [float(x) for x in a.full_lrs.split(",")]
        lora_lrs = [float(x) for x in a.lora_lrs.split(",")]
        ranks = [int(x) for x in a.ranks.split(",")]
    except ValueError as e:
        raise SystemExit(f"error: --full-lrs/--lora-lrs/--ranks take comma-separated numbers ({e})") from e
    t_start = time.perf_counter()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    reused = (
        a.reuse_base and (work / "base" / "config.json").is_file() and (work / "base_cost.json").is_file()
    )
    base_cost = (
        json.loads((work / "base_cost.json").read_text())
        if reused
        else build_base(work, a.pretrain_steps, a.threads)
    )
    print(f"base: {'reused' if reused else 'built'} ({base_cost['wall_s']:.0f} s)", flush=True)
    tmp = work / "train.jsonl.tmp"
    with open(tmp, "w") as f:  # the train file minus the held-out validation questions
        for lab, q in split_train(a.val_n)[0]:
            f.write(json.dumps({"messages": chat(q, lab)}) + "\n")
    os.replace(tmp, work / "train.jsonl")
    # 1. selection: every method x every lr of its sweep, at the method's final step count
    sel = [{"name": f"full@{lr:g}", "group": "full", "lr": lr, "steps": a.full_steps, "sweep": True}
           for lr in full_lrs]  # fmt: skip
    sel += [
        {"name": f"lora-r{r}@{lr:g}", "group": f"lora-r{r}", "method": "lora", "r": r, "lr": lr,
         "steps": a.lora_steps, "sweep": True}
        for r in ranks for lr in lora_lrs
    ]  # fmt: skip
    sweep = spawn(a, work, sel)
    for job, s in zip(sel, sweep, strict=True):
        s["group"] = job["group"]
    winners = select(sweep)
    chosen = {g: w["lr"] for g, w in winners.items()}
    from nanoforge.core_model.checkpoint import load_model
    from nanoforge.tokenizer.hf import load_any_tokenizer

    tok = load_any_tokenizer(work / "base" / "tokenizer")
    for w in winners.values():
        w["selected"] = True
    results = []
    for g, w in winners.items():  # only the winners see the test set
        results.append({**w, "variant": g, **test_accuracy(load_model(w["final"]), tok, a.eval_n)})
    # 2. prompting and diagnostics at the chosen lrs (not selected: scored on validation and test)
    jobs: list[dict] = [{"name": "prompting"}]
    lora_groups = [g for g in winners if g != "full"]
    if a.control_rank:
        ctl_lr = chosen.get(f"lora-r{a.control_rank}", chosen[lora_groups[-1]])
        ctl = {"method": "lora", "r": a.control_rank, "lr": ctl_lr, "steps": a.lora_steps, "tokens": "none"}
        jobs.append({"name": CONTROL, **ctl})
        jobs.append({"name": LABEL_ROWS, **ctl, "tokens": ",".join(map(str, label_row_ids(work)))})
    if a.long_factor > 1 and lora_groups:
        top = max(lora_groups, key=lambda g: (winners[g]["val_accuracy"], -winners[g]["val_loss"]))
        w = winners[top]
        jobs.append({"name": f"long-r{w['rank']}", "method": "lora", "r": w["rank"], "lr": w["lr"],
                     "steps": a.lora_steps * a.long_factor})  # fmt: skip
    extra = spawn(a, work, jobs)
    results = [extra[0], *results, *extra[1:]]
    total_s = time.perf_counter() - t_start
    manifest = {
        "base": str(work / "base"),
        "base_cost": base_cost,
        "labels": LABELS,
        "instruction": INSTRUCTION,
        "n_train": len(split_train(a.val_n)[0]),  # the labelled questions the fine-tunes trained on
        "variants": {r["variant"]: r for r in results if r["variant"] != "prompting"},
    }
    tmp = work / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, work / MANIFEST)
    breakdown = loss_breakdown(work, {r["variant"]: r["final"] for r in results if "method" in r})
    write_report(a.out, results, sweep, chosen, a, base_cost, reused, total_s, breakdown)


def select(sweep: list[dict]) -> dict[str, dict]:
    """Per method group, the sweep run with the highest validation accuracy (lower validation loss breaks
    ties); the test set plays no part."""
    best: dict[str, dict] = {}
    for s in sweep:
        cur = best.get(s["group"])
        if cur is None or (s["val_accuracy"], -s["val_loss"]) > (cur["val_accuracy"], -cur["val_loss"]):
            best[s["group"]] = s
    return best


def write_report(
    out: Path, results: list[dict], sweep: list[dict], chosen: dict[str, float], a: argparse.Namespace,
    base_cost: dict, reused: bool, total_s: float, breakdown: dict,
) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if v is not None}
    (out / "lora_vs_full.json").write_text(
        json.dumps(
            {
                "results": results,
                "sweep": sweep,
                "chosen": chosen,
                "base_cost": base_cost,
                "reused_base": reused,
                "total_s": total_s,
                "breakdown": breakdown,
                "args": args,
            },
            indent=1,
            default=str,
        )
    )
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    tuned = [r for r in results if r["variant"] != "prompting"]
    ax1.bar([r["variant"] for r in results], [100 * r["accuracy"] for r in results], color="tab:blue")
    ax1.axhline(100 * 138 / 500, ls="--", color="gray", label="majority class (DESC)")
    ax1.set_ylabel("TREC test accuracy (%)")
    ax1.tick_params(axis="x", labelrotation=35)
    ax1.legend()
    for g in chosen:
        pts = sorted((s["lr"], 100 * s["val_accuracy"]) for s in sweep if s["group"] == g)
        ax2.plot(*zip(*pts, strict=True), "o-", label=f"{g} (chose {chosen[g]:g})")
    ax2.axhline(100 * val_majority(a.val_n), ls="--", color="gray", label="majority class")
    ax2.set_xscale("log")
    ax2.set_xlabel("learning rate")
    ax2.set_ylabel("validation accuracy (%)")
    ax2.set_title(f"selection sweep ({a.val_n} held-out train questions)", fontsize=10)
    ax2.legend(fontsize=7)
    ax3.scatter([r["trainable"] for r in tuned], [100 * r["accuracy"] for r in tuned])
    for r in tuned:
        ax3.annotate(r["variant"], (r["trainable"], 100 * r["accuracy"]))
    ax3.set_xscale("log")
    ax3.set_xlabel("trainable parameters")
    ax3.set_ylabel("accuracy (%)")
    fig.tight_layout()
    fig.savefig(out / "lora_vs_full.png", dpi=110)
    load = getattr(a, "load_note", None) or f"{os.getloadavg()[0]:.1f} at the end"
    load += " (other jobs shared the 2 cores: tokens/s and wall times are noisy)"
    parts = list(next(iter(breakdown.values()))) if breakdown else []
    bd_rows = ["| variant | " + " | ".join(parts) + " |", "|---|" + "---:|" * len(parts)]
    bd_rows += [f"| {k} | " + " | ".join(f"{v[p]:.3f}" for p in parts) + " |" for k, v in breakdown.items()]
    selected = {id(r) for r in sweep if r.get("selected")}
    train_cpu = base_cost["cpu_s"] + sum(
        r.get("train_cpu_s", 0.0) for r in [*sweep, *(r for r in results if r.get("selected") is None)]
    )
    sweep_rows = [
        "| method | lr | steps | val accuracy | most chosen (val) | val loss | train CPU-s | chosen |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    sweep_rows += [
        f"| {s['group']} | {s['lr']:g} | {s['steps']} | {100 * s['val_accuracy']:.1f}% | "
        f"{top_answer(s, 'val_answers', a.val_n)} | {s['val_loss']:.3f} | {s['train_cpu_s']:.0f} | "
        f"{'**yes**' if id(s) in selected else ''} |"
        for s in sweep
    ]
    rows = [
        "| variant | lr | steps | trainable params | peak RSS (MB) | train state (MB) | train tok/s | train s "
        "| train CPU-s | val loss | val accuracy | test accuracy | most chosen label (test) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r["variant"] == "prompting":
            rows.append(
                f"| prompting (6-shot, base model; {r['n_test']} test questions) | – | – | 0 | "
                f"{r['peak_rss_mb']:.0f} | – | – | – | – | – | – | {100 * r['accuracy']:.1f}% | – |"
            )
            continue
        rows.append(
            f"| {r['variant']} | {r['lr']:g} | {r['steps']} | {r['trainable']:,} | {r['peak_rss_mb']:.0f} | "
            f"{r['train_state_mb']:.2f} | {r['tokens_per_s']:,.0f} | {r['train_s']:.0f} | {r['train_cpu_s']:.0f} | "
            f"{r['val_loss']:.3f} | {100 * r['val_accuracy']:.1f}% | {100 * r['accuracy']:.1f}% | {top_answer(r)} |"
        )
    cmd = (
        f"python tools/experiments/lora_vs_full.py --pretrain-steps {a.pretrain_steps} --full-steps "
        f"{a.full_steps} --lora-steps {a.lora_steps} --full-lrs {a.full_lrs} --lora-lrs {a.lora_lrs} "
        f"--val-n {a.val_n} --long-factor {a.long_factor} "
        f"--threads {a.threads} --jobs {a.jobs} --eval-n {a.eval_n} --prompt-n {a.prompt_n}"
        + (f" --trainable-tokens {a.trainable_tokens}" if a.trainable_tokens != "special" else "")
        + (f" --control-rank {a.control_rank}" if a.control_rank != 16 else "")
        + (" --reuse-base" if reused else "")
    )
    base_note = (
        "the base was REUSED from an earlier run (pretraining took "
        f"{base_cost['wall_s']:.0f} s then; add it to the total)"
        if reused
        else f"tokenizer + pretraining the base took {base_cost['wall_s']:.0f} s ({base_cost['cpu_s']:.0f} CPU-s)"
    )
    (out / "lora_vs_full.md").write_text(
        "# LoRA vs full fine-tuning vs prompting (TREC question classification)\n\n"
        f"Command: `{cmd}` — total {total_s / 60:.1f} min on this machine (2 CPU cores; {base_note}); "
        f"the training alone (pretraining, sweep, variants) used {train_cpu:,.0f} CPU-seconds, i.e. about "
        f"{train_cpu / 120:.0f} min of 2 idle cores before evaluation and process start-up. "
        f"Load average: {load}.\n\n"
        "Base: a 4-layer, width-128 GPT with a 1,024-id BPE tokenizer, pretrained for "
        f"{a.pretrain_steps} steps on tinyshakespeare + the (unlabelled) TREC train questions. Each variant then "
        "trains (batch 16 x 128 packed tokens, loss on the assistant's label tokens only) on the 5,452 labelled "
        f"train questions minus {a.val_n} seeded ones held out for model selection (the validation accuracy), "
        "rendered as ChatML chats (5% of the rest held out by the trainer for the validation loss); accuracy is on "
        f"{tuned[0]['n_test']} of the 500 TREC-10 test questions (a seeded subset when fewer), choosing the most likely of the six labels. LoRA (via peft) adapts q/k/v/o/up/down "
        "projections, alpha = 2r, no dropout, and trains the embedding rows of the chat special tokens "
        f"(`lora.trainable_tokens={a.trainable_tokens}`); `{CONTROL}` is LoRA r=16 with those rows frozen "
        f"(`lora.trainable_tokens=none`: plain LoRA, the setup of the earlier run), and `{LABEL_ROWS}` (a diagnostic) "
        "also trains the rows of the tokens the six labels are spelled with; both use the lr chosen for "
        f"r={a.control_rank}. `long-r<R>` (a diagnostic) is the best-validation LoRA rank at its chosen lr with "
        f"{a.long_factor}x the steps. Only the selected runs and the diagnostics are scored on the test set.\n\n"
        "## Model selection (validation split, test set untouched)\n\n"
        "Every method trains once per lr at its final step count; the run with the highest validation accuracy "
        "(the test metric's scoring, on the held-out train questions) becomes the variant, lower validation "
        "loss breaking ties. The lr ranges differ by method on purpose (LoRA usually wants ~10x full FT's).\n\n"
        + "\n".join(sweep_rows)
        + "\n\n"
        "## Variants\n\n"
        + "\n".join(rows)
        + "\n\n![accuracy, lr sweep and trainable parameters](lora_vs_full.png)\n\n"
        "Train state = fp32 weights + gradients and AdamW moments of the trainable parameters (what the optimizer "
        "holds); peak RSS is the whole process (Python, torch, data) and is dominated by the runtime at this size. "
        "Train CPU-s is the CPU time of the fine-tune (user + system) — the training cost that "
        "`prompting_vs_finetuning.md` prices.\n\n"
        "## Where the loss sits\n\n"
        "Mean negative log-likelihood (nats) of each part of the gold answer, 100 test questions (diagnosis only; "
        "nothing is chosen with it):\n\n" + "\n".join(bd_rows) + "\n\n"
        f"Reference: knowing only the train label frequencies gives {prior_nll():.3f} nats on the first label "
        f"token of these questions (a uniform guess over the six labels: {math.log(6):.3f}).\n\n"
        "## What it means\n\n"
        + interpret(results, sweep, chosen, a.val_n)
        + floor_note(breakdown, results, prior_nll())
        + "\n"
    )


def top_answer(r: dict, key: str = "answers", n: int | None = None) -> str:
    """``"DESC 100%"``: the label a variant chose most often (on the test set, or the split of ``key``) and its
    share (of ``n`` questions, default the test size)."""
    if not r.get(key):
        return "–"
    label, count = max(r[key].items(), key=lambda kv: kv[1])
    return f"{label} {count / (n or r['n_test']):.0%}"


def top_share(r: dict, key: str = "answers") -> float:
    """Share of the questions (test, or the split of ``key``) given the most chosen label."""
    counts = r.get(key) or {"-": 0}
    return max(counts.values()) / max(sum(counts.values()), 1)


def val_majority(val_n: int) -> float:
    """Share of the validation split's most common label (what always answering it scores)."""
    counts: dict[str, int] = {}
    for label, _ in split_train(val_n)[1]:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / val_n


def floor_note(breakdown: dict[str, dict[str, float]], results: list[dict], prior: float) -> str:
    """Bullets on where LoRA's loss sits: with vs without trainable token rows, and any rank-independent floor."""
    by = {r["variant"]: r for r in results}
    loras = {k: v for k, v in breakdown.items() if k.startswith("lora")}
    if "full" not in breakdown or not loras:
        return ""
    full = breakdown["full"]
    out = []
    rows = next((by[k]["token_rows"] for k in loras if by[k].get("token_rows")), [])
    if rows and CONTROL in breakdown:
        ctl, c = breakdown[CONTROL], by[CONTROL]
        same = by.get(f"lora-r{c['rank']}")
        parts = []
        for p in full:
            lo, hi = min(v[p] for v in loras.values()), max(v[p] for v in loras.values())
            verb = "drops" if hi < ctl[p] - 0.1 else "rises" if lo > ctl[p] + 0.1 else "stays"
            parts.append(
                f"{p} {verb}: {lo:.3f}-{hi:.3f} with the rows training (r {', '.join(k[6:] for k in loras)}) vs "
                f"{ctl[p]:.3f} with them frozen ({CONTROL}) and {full[p]:.3f} for full FT"
            )
        acc = (
            f" Accuracy at the same rank: {same['variant']} {100 * same['accuracy']:.1f}% vs {CONTROL} "
            f"{100 * c['accuracy']:.1f}% ({100 * (same['accuracy'] - c['accuracy']):+.1f} points)."
            if same
            else ""
        )
        out.append(
            f"\n- Trainable token rows: the LoRA variants also train the embedding rows of the {len(rows)} special "
            f"tokens that occur in the chats (ids {', '.join(map(str, rows))}; a tied LM head reads the same rows). "
            f"Per-token loss: " + "; ".join(parts) + "." + acc
        )
        eot = "end of turn"
        if eot in ctl and max(v[eot] for v in loras.values()) < ctl[eot] - 0.5 and same:
            helped = same["accuracy"] > c["accuracy"] + 0.02 and top_share(same) < 0.9
            collapsed = same["accuracy"] > c["accuracy"] + 0.02 and not helped
            out.append(
                f"\n- So the untrained special-token rows were the end-of-turn floor ({ctl[eot]:.2f} -> "
                f"{max(v[eot] for v in loras.values()):.3f} nats), "
                + (
                    "and training them also lifts accuracy."
                    if helped
                    else (
                        f"and {same['variant']}'s {100 * (same['accuracy'] - c['accuracy']):+.1f} points over "
                        f"{CONTROL} come from answering one label ({top_answer(same)}), not from telling the "
                        "classes apart; the rows are "
                        if collapsed
                        else "but "
                    )
                    + "not what holds LoRA's accuracy back: the first label token, the one that carries "
                    f"the class, stays at {min(v['first label token'] for v in loras.values()):.2f}-"
                    f"{max(v['first label token'] for v in loras.values()):.2f} nats with or without them. Accuracy "
                    "sums the label's tokens and the end of turn, so a per-label difference in the old end-of-turn "
                    "loss also moved the frozen-rows scores"
                    + (
                        "; most chosen test labels with it gone: "
                        + ", ".join(f"{k} {top_answer(by[k])}" for k in loras)
                        + "."
                        if any(k in by and by[k].get("answers") for k in loras)
                        else "."
                    )
                )
            )
        if LABEL_ROWS in breakdown:
            lr_, lb = by[LABEL_ROWS], breakdown[LABEL_ROWS]
            first = "first label token"
            near = abs(lb[first] - full[first]) < 0.15
            out.append(
                f"\n- Diagnostic {LABEL_ROWS} (r={c['rank']}, also the rows of the "
                f"{len(lr_['token_rows']) - len(rows)} tokens the labels are spelled with): "
                + ", ".join(f"{p} {lb[p]:.3f}" for p in lb)
                + f" nats; accuracy {100 * lr_['accuracy']:.1f}% (most chosen label: {top_answer(lr_)})"
                + (
                    f". Its first-label-token loss is near full FT's ({full[first]:.3f}) and both are near the "
                    f"{prior:.3f} nats of knowing only the label frequencies, yet accuracy is "
                    f"{100 * lr_['accuracy']:.1f}% vs {100 * by['full']['accuracy']:.1f}%: on this task that loss "
                    "mostly measures the label prior, so the validation loss cannot rank the variants; what LoRA "
                    "misses here is which question gets which label, not the label tokens' rows."
                    if near
                    and abs(full[first] - prior) < 0.3
                    and lr_["accuracy"] < by["full"]["accuracy"] - 0.05
                    else "."
                )
            )
    stuck = [
        p
        for p in full
        if len(loras) > 1
        and max(v[p] for v in loras.values()) - min(v[p] for v in loras.values()) < 0.02
        and min(v[p] for v in loras.values()) > full[p] + 0.5
    ]
    if stuck:
        vals = "; ".join(
            f"{p}: {min(v[p] for v in loras.values()):.2f}-{max(v[p] for v in loras.values()):.2f} for every "
            f"rank vs {full[p]:.3f} for full FT"
            for p in stuck
        )
        out.append(
            f"\n- A floor that does not depend on the rank: the loss on the {' and '.join(stuck)} ends at the same "
            f"value whatever r ({vals}), so more rank does not help there; it points at weights that stay frozen "
            "under LoRA"
            + (" (the final norm, the other embedding rows)." if rows else " (norms, embedding rows).")
        )
    return "".join(out)


def interpret(results: list[dict], sweep: list[dict], chosen: dict[str, float], val_n: int) -> str:
    """Statements computed from the numbers (nothing here is written before the run)."""
    by = {r["variant"]: r for r in results}
    majority = 138 / 500  # DESC share of the test set
    p, f = by["prompting"]["accuracy"], by["full"]["accuracy"]
    loras = {k: v for k, v in by.items() if k.startswith("lora")}
    best = max(loras, key=lambda k: (loras[k]["val_accuracy"], -loras[k]["val_loss"]))
    lo = loras[best]
    gap = lo["accuracy"] - f
    groups = {g: [s for s in sweep if s["group"] == g] for g in chosen}
    by_loss = {g: min(v, key=lambda s: s["val_loss"])["lr"] for g, v in groups.items()}
    differ = [g for g in chosen if by_loss[g] != chosen[g]]
    lora_lrs = [chosen[g] for g in chosen if g != "full"]
    lines = [
        f"- Prompting the base model (6 shots): {100 * p:.1f}% on {by['prompting']['n_test']} questions (majority class: "
        f"{100 * majority:.1f}%). Fine-tuning on {5452 - val_n:,} labelled questions: full FT {100 * f:.1f}%, best LoRA "
        f"by validation accuracy ({best}) {100 * lo['accuracy']:.1f}%. The full prompting study (zero/few-shot, CoT, intervals, "
        "calibration, cost) is `prompting_vs_finetuning.md`.",
        "- Selection (validation accuracy, " + f"{val_n} held-out train questions; majority class there "
        f"{100 * val_majority(val_n):.1f}%): "
        + "; ".join(
            f"{g} {min(100 * s['val_accuracy'] for s in v):.1f}-{max(100 * s['val_accuracy'] for s in v):.1f}% "
            f"over lr {min(s['lr'] for s in v):g}-{max(s['lr'] for s in v):g}, chose {chosen[g]:g}"
            + (
                " (the top of its range: a wider sweep might go higher)"
                if chosen[g] == max(s["lr"] for s in v) and len(v) > 1
                else " (the bottom of its range: a wider sweep might go lower)"
                if chosen[g] == min(s["lr"] for s in v) and len(v) > 1
                else ""
            )
            for g, v in groups.items()
        )
        + (
            f". The chosen LoRA lrs are {min(lora_lrs) / by['full']['lr']:.0f}-"
            f"{max(lora_lrs) / by['full']['lr']:.0f}x the chosen full-FT lr."
            if lora_lrs
            else "."
        ),
        "- Accuracy vs loss as the criterion: "
        + (
            "the lowest validation loss would have picked a different lr for "
            + ", ".join(f"{g} ({by_loss[g]:g} instead of {chosen[g]:g})" for g in differ)
            + "; the two criteria disagree on this task."
            if differ
            else "the lowest validation loss picks the same lr as the highest validation accuracy for every "
            "method here, so the criterion alone does not explain the gap."
        ),
        "- One-label runs (>= 95% of the validation questions get the same label): "
        + (
            "; ".join(
                f"{g} at lr " + ", ".join(f"{s['lr']:g} ({top_answer(s, 'val_answers', val_n)})" for s in bad)
                for g, v in groups.items()
                if (bad := [s for s in v if top_share(s, "val_answers") >= 0.95])
            )
            or "none"
        )
        + (
            ". Where every lr of a sweep answers one label, no lr taught that method to tell the classes apart "
            "and the validation loss tie-break made the pick: " + ", ".join(tied) + "."
            if (tied := [g for g, v in groups.items() if all(top_share(s, "val_answers") >= 0.95 for s in v)])
            else "."
        ),
        "- Tuned LoRA vs full FT: "
        + ", ".join(
            f"{k} {100 * v['accuracy']:.1f}% ({v['trainable'] / by['full']['trainable']:.1%} of the "
            f"parameters)"
            for k, v in loras.items()
        )
        + f" vs full {100 * f:.1f}%; best LoRA is {100 * gap:+.1f} points from full FT, with "
        f"{lo['steps']} vs {by['full']['steps']} steps and {lo['train_cpu_s']:.0f} vs "
        f"{by['full']['train_cpu_s']:.0f} CPU-s of training.",
        f"- Memory: the optimizer-side training state drops from {by['full']['train_state_mb']:.1f} MB (full) to "
        f"{by.get('lora-r8', lo)['train_state_mb']:.1f} MB (r=8), but peak RSS ({by['full']['peak_rss_mb']:.0f} vs "
        f"{by.get('lora-r8', lo)['peak_rss_mb']:.0f} MB) is dominated by the runtime at this size, and LoRA's "
        "processes also import peft/transformers. The saving matters once weights are gigabytes.",
        f"- Speed (training tokens/s, evaluation excluded): full {by['full']['tokens_per_s']:,.0f}, "
        + ", ".join(f"{k} {v['tokens_per_s']:,.0f}" for k, v in loras.items())
        + ". LoRA skips the frozen weights' gradients but adds two small matmuls per adapted layer; the "
        "processes ran side by side on shared CPU cores, so these figures are noisy.",
        "- Validation vs test: the selected runs score "
        + ", ".join(
            f"{k} {100 * v['val_accuracy']:.1f}/{100 * v['accuracy']:.1f}%"
            for k, v in by.items()
            if v.get("selected")
        )
        + " "
        "(validation/test); the selection cost is every sweep run's training (in the CPU-second total above), "
        "not only the winner's.",
    ]
    long = next((v for k, v in by.items() if k.startswith("long-r")), None)
    if long:
        same = by.get(f"lora-r{long['rank']}")
        if same:
            d = long["val_accuracy"] - same["val_accuracy"]
            lines.append(
                f"- Diagnostic {long['variant']} (not selected): {long['steps']} instead of {same['steps']} steps at "
                f"the same lr {long['lr']:g}: validation {100 * same['val_accuracy']:.1f}% -> "
                f"{100 * long['val_accuracy']:.1f}%, test {100 * same['accuracy']:.1f}% -> "
                f"{100 * long['accuracy']:.1f}% (most chosen: {top_answer(long)}); "
                + (
                    "on validation, longer LoRA training helps, so the step budget, not only the rank or lr, "
                    "holds LoRA back here (a diagnostic: the step count was not selected)."
                    if d > 0.03
                    else "on validation, more steps do not help much, so at this lr the training length is not what "
                    "limits LoRA; the short pretraining of the base (a LoRA update can only steer what the base "
                    "already computes) is the untested remaining suspect."
                )
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
