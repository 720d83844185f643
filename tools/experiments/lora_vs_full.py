"""Experiment: full fine-tuning vs LoRA r=4/8/16 (each lr selected on a validation split) vs few-shot prompting.

    .venv/bin/python tools/experiments/lora_vs_full.py --out docs/experiments

Domain task: TREC question classification (6 coarse labels; ../shared/data/trec, 5,452 train / 500 test).
Pipeline, all on CPU with nanoforge's own recipes:
1. a 1,024-id BPE tokenizer with ChatML specials, trained on tinyshakespeare + the TREC train questions;
2. a small GPT (4 layers, width 128) pretrained on the same unlabeled text (``pretrain.run``,
   ``--pretrain-steps``, 1000), and a second one pretrained for only ``--short-base-steps`` (200) for the
   base-length diagnostic;
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
   the lr chosen for that rank, steps diagnostics, ``long-full`` / ``long-r<R>``: full FT and the
   best-validation LoRA rank at their chosen lrs with ``--long-factor`` (3) times the steps, and ``short-base-full`` / ``short-base-r<R>``: full FT
   and the best LoRA rank, each at its chosen lr, on the short base. LoRA gets more steps than full FT (the usual
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
from _lora_vs_full_report import CONTROL, LABEL_ROWS, selection_key, write_report

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
INSTRUCTION = "Classify the question type (ABBR, DESC, ENTY, HUM, LOC or NUM): "
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,up_proj,down_proj"
MANIFEST = "manifest.json"
VAL_SEED = 1  # the held-out validation questions: a seeded sample of the train file


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


def build_base(work: Path, pretrain_steps: int, threads: int, name: str = "base") -> dict:
    """Tokenizer + pretrained base model in ``work/<name>`` (with tokenizer/ inside); returns its costs.

    The main base (``name="base"``) trains the tokenizer and tokenizes the corpus; another name (the
    short-base diagnostic) reuses them and only pretrains, for ``pretrain_steps``, into its own dir."""
    from nanoforge.core_model.checkpoint import load_model, save_model
    from nanoforge.tokenizer.hf import load_any_tokenizer
    from nanoforge.trainer.config import load_config
    from nanoforge.trainer.pretrain import run

    t0, c0 = time.perf_counter(), cpu_seconds()
    for sub in (f"pretrain-{name}", name):
        shutil.rmtree(work / sub, ignore_errors=True)
    tok = build_data(work) if name == "base" else load_any_tokenizer(work / "tok")
    over = pretrain_overrides(work, pretrain_steps, threads)
    summary = run(load_config("shakespeare-char", over), work / f"pretrain-{name}")
    save_model(load_model(work / f"pretrain-{name}" / "final"), work / name)
    tok.save(work / name / "tokenizer")
    shutil.rmtree(
        work / f"pretrain-{name}", ignore_errors=True
    )  # checkpoints: the saved base is what is kept
    cost = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "val_loss": summary["eval"]}
    (work / f"{name}_cost.json").write_text(json.dumps(cost, default=str))
    return cost


def build_data(work: Path):  # returns a nanoforge Tokenizer (imported lazily)
    """The corpus (tinyshakespeare + the unlabelled TREC train questions), its 1,024-id BPE tokenizer with
    ChatML specials (``work/tok``) and its token shards (``work/data``); returns the tokenizer."""
    from nanoforge.tokenizer import train_bpe
    from nanoforge.tokenizer.chat import CHATML_SPECIALS, add_chat_template
    from nanoforge.trainer.prepare import prepare

    for sub in ("text", "tok", "data"):
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
    return tok


def pretrain_overrides(work: Path, pretrain_steps: int, threads: int) -> list[str]:
    """The base's pretraining config (on top of the shipped shakespeare-char one)."""
    return [
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
        f"base.model={work / a.base}",
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
        cmd += [
            "--trainable-tokens",
            job.get("tokens", a.trainable_tokens),
            "--base",
            job.get("base", "base"),
        ]
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
    ap.add_argument("--pretrain-steps", type=int, default=1000, help="pretraining steps of the base")
    ap.add_argument(
        "--short-base-steps",
        type=int,
        default=200,
        help="pretraining steps of the short-base diagnostic (0: none)",
    )
    ap.add_argument(
        "--base-threads", type=int, default=2, help="torch threads for pretraining (nothing else runs then)"
    )
    ap.add_argument("--full-steps", type=int, default=150, help="full fine-tuning steps")
    ap.add_argument("--full-lrs", default="3e-4,1e-3,3e-3,1e-2", help="full-FT lrs tried (selection sweep)")
    ap.add_argument(
        "--lora-steps", type=int, default=200, help="LoRA steps (each is cheaper than a full step)"
    )
    ap.add_argument("--lora-lrs", default="1e-3,3e-3,1e-2,2e-2", help="LoRA lrs tried at every rank")
    ap.add_argument("--val-n", type=int, default=500, help="train questions held out for model selection")
    ap.add_argument(
        "--long-factor", type=int, default=3, help="steps multiple of the long-* diagnostics (1: none)"
    )
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
    ap.add_argument("--base", default="base", help=argparse.SUPPRESS)
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
            d["breakdown"], val_majority(a.val_n), prior_nll(),
        )  # fmt: skip
    for flag, value in (("--pretrain-steps", a.pretrain_steps), ("--full-steps", a.full_steps),
                        ("--lora-steps", a.lora_steps), ("--long-factor", a.long_factor),
                        ("--base-threads", a.base_threads)):  # fmt: skip
        if value < 1:
            raise SystemExit(f"error: {flag} must be >= 1, got {value}")
    if a.short_base_steps < 0 or a.short_base_steps >= a.pretrain_steps:
        raise SystemExit(
            f"error: --short-base-steps must be 0 (none) or below --pretrain-steps={a.pretrain_steps}, "
            f"got {a.short_base_steps}"
        )
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
        else build_base(work, a.pretrain_steps, a.base_threads)
    )
    print(f"base: {'reused' if reused else 'built'} ({base_cost['wall_s']:.0f} s)", flush=True)
    # the base-length diagnostic: the same corpus and tokenizer, fewer pretraining steps
    if a.short_base_steps:
        base_cost["short"] = (
            json.loads((work / "base-short_cost.json").read_text())
            if reused and (work / "base-short_cost.json").is_file()
            else build_base(work, a.short_base_steps, a.base_threads, "base-short")
        )
    train_qs = split_train(a.val_n)[0]  # the labelled questions the fine-tunes train on
    tmp = work / "train.jsonl.tmp"
    with open(tmp, "w") as f:  # the train file minus the held-out validation questions
        for lab, q in train_qs:
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
    top = winners[max(lora_groups, key=lambda g: selection_key(winners[g]))] if lora_groups else None
    if a.long_factor > 1:
        jobs.append({"name": "long-full", "lr": chosen["full"], "steps": a.full_steps * a.long_factor})
    if a.long_factor > 1 and top:
        jobs.append({"name": f"long-r{top['rank']}", "method": "lora", "r": top["rank"], "lr": top["lr"],
                     "steps": a.lora_steps * a.long_factor})  # fmt: skip
    if a.short_base_steps:  # the same recipes at the same lrs on the short base
        jobs.append(
            {"name": "short-base-full", "lr": chosen["full"], "steps": a.full_steps, "base": "base-short"}
        )
        if top:
            jobs.append({"name": f"short-base-r{top['rank']}", "method": "lora", "r": top["rank"], "lr": top["lr"],
                         "steps": a.lora_steps, "base": "base-short"})  # fmt: skip
    longest_first = sorted(jobs, key=lambda j: -j.get("steps", 0))  # packs the parallel workers better
    done = {r["variant"]: r for r in spawn(a, work, longest_first)}
    extra = [done[j["name"]] for j in jobs]
    results = [extra[0], *results, *extra[1:]]
    total_s = time.perf_counter() - t_start
    manifest = {
        "base": str(work / "base"),
        "base_cost": base_cost,
        "labels": LABELS,
        "instruction": INSTRUCTION,
        "n_train": len(train_qs),
        "variants": {r["variant"]: r for r in results if r["variant"] != "prompting"},
    }
    tmp = work / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, work / MANIFEST)
    breakdown = loss_breakdown(work, {r["variant"]: r["final"] for r in results if "method" in r})
    write_report(
        a.out,
        results,
        sweep,
        chosen,
        a,
        base_cost,
        reused,
        total_s,
        breakdown,
        val_majority(a.val_n),
        prior_nll(),
    )


def select(sweep: list[dict]) -> dict[str, dict]:
    """Per method group, the sweep run with the highest validation accuracy (lower validation loss breaks
    ties); the test set plays no part."""
    best: dict[str, dict] = {}
    for s in sweep:
        cur = best.get(s["group"])
        if cur is None or selection_key(s) > selection_key(cur):
            best[s["group"]] = s
    return best


def val_majority(val_n: int) -> float:
    """Share of the validation split's most common label (what always answering it scores)."""
    counts: dict[str, int] = {}
    for label, _ in split_train(val_n)[1]:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / val_n


if __name__ == "__main__":
    main()
