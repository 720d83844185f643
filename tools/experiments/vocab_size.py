"""Experiment: vocabulary size 4k..32k. What does a bigger vocab buy (compression) and cost (time, parameters)?

    .venv/bin/python tools/experiments/vocab_size.py --corpus stdlib --max-mb 20 --out docs/experiments
    .venv/bin/python tools/experiments/vocab_size.py --corpus ../shared/data/tinyshakespeare/input.txt ...

``--corpus stdlib`` (the default) means the local Python standard library's *.py, *.txt and *.rst files
(``sysconfig.get_paths()["stdlib"]``, recursive, sorted by path, site-packages excluded, non-UTF-8 files
skipped), the same corpus as tools/bench/tokenizer.py; anything else is files/directories/globs.

For each vocab size: train our BPE (GPT-4 pattern) on 90% of the corpus documents, measure bytes per token on
the held-out 10% (higher = fewer tokens for the same text), training wall time, and the share of a small
model's parameters spent on the (tied) embedding: width 512, 8 layers, non-embedding parameters taken as
12 * L * d^2 (attention 4d^2 + MLP 8d^2 per layer), embedding V * d. Writes ``vocab_size.md`` (table) and
``vocab_size.png`` (plot) into ``--out``.
With ``--downstream 8192,32768`` it also trains one small GPT per listed vocab on the same training documents
(the first ``--train-mb`` MB of them) at **equal training compute** and reports held-out bits per byte, the
loss measure that compares models with different tokenizers fairly. Equal compute means equal training
FLOPs as ``nanoforge.core_model.info.flops_per_token(...)["training"]`` counts them (6 x matmul parameters,
LM head included, + attention) times tokens: the smallest listed vocab trains ``--model-steps`` steps of
``batch x block`` tokens, every other vocab as many steps as the same FLOPs buy. Same body for all (4 layers,
4 heads, width 128, block 128, batch 16, AdamW lr 2e-3, 10% warmup then cosine, clip 1.0, seed 1337), only
the vocabulary (and so the embedding / LM head) differs. ``--equal-tokens`` adds, for the larger vocabs, a
run of ``--model-steps`` steps (equal tokens, more compute) to separate the two effects. Bits per byte: the
model's mean next-token loss over the held-out documents, cut into non-overlapping ``block``-token windows,
in bits, times held-out tokens / held-out UTF-8 bytes. Writes ``vocab_size_downstream.png`` too.

Results go to ``vocab_size.json`` (tokenizer rows) and ``vocab_size_downstream.json`` (model rows), each
with its run's metadata (command, date, load); the .md and .png are rendered from them, including the
downstream "What it means" section, which ``interpret_downstream`` computes from the numbers.
``--render-only`` re-renders everything from the two JSON files in ``--out`` without training (each
section then states the command and date of the run it comes from).

What it does not do: tune the model per vocab, repeat seeds, or train long (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _report import ROOT, header, load_level, load_results, run_meta, save_figure, save_results, write_text

D_MODEL, N_LAYER = 512, 8
NON_EMBEDDING = 12 * N_LAYER * D_MODEL**2


def load_docs(inputs: list[str], max_mb: float) -> list[str]:
    """The corpus's text files (sorted, as ``train_bpe`` would find them), up to ``max_mb`` MB, one doc per file."""
    from nanoforge.tokenizer.corpus import collect_files

    if inputs == ["stdlib"]:
        from nanoforge.tokenizer.stdlib_corpus import stdlib_source_docs

        return stdlib_source_docs(int(max_mb * 1e6))
    files, _ = collect_files(inputs)
    docs, total = [], 0
    for f in files:
        try:
            text = f.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_mb * 1e6:
            break
    return docs


def run(docs: list[str], vocabs: list[int], keep: dict | None = None) -> list[dict]:
    """Train one BPE per vocab on the training documents (``keep[vocab] = tokenizer`` when given)."""
    from nanoforge.tokenizer import train_bpe

    if len(docs) < 2:
        raise SystemExit(f"error: the corpus has {len(docs)} document(s); need at least 2 (1 held out)")
    held = docs[::10]  # every 10th document is held out
    train = [d for i, d in enumerate(docs) if i % 10]
    held_bytes = sum(len(d.encode("utf-8")) for d in held)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        path.write_bytes("\n".join(train).encode("utf-8"))
        train_mb = path.stat().st_size / 1e6
        for vocab in vocabs:
            t = time.perf_counter()
            tok = train_bpe(path, vocab_size=vocab, show_progress=False)
            secs = time.perf_counter() - t
            if keep is not None:
                keep[vocab] = tok
            n_tokens = sum(map(len, tok.encode_batch(held)))
            emb = tok.vocab_size * D_MODEL
            rows.append(
                {
                    "vocab": tok.vocab_size,
                    "seconds": secs,
                    "bytes_per_token": held_bytes / n_tokens,
                    "embedding": emb,
                    "share": emb / (emb + NON_EMBEDDING),
                    "train_mb": train_mb,
                    "held_mb": held_bytes / 1e6,
                }
            )
            r = rows[-1]
            print(
                f"vocab {r['vocab']:6d}: train {secs:6.2f} s, held-out {r['bytes_per_token']:.3f} bytes/token, "
                f"embedding {emb / 1e6:.2f}M = {100 * r['share']:.1f}% of params",
                flush=True,
            )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = [r["vocab"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("held-out bytes per token (higher = better)", [r["bytes_per_token"] for r in rows]),
        ("training time (s)", [r["seconds"] for r in rows]),
        (f"embedding share of params (d={D_MODEL}, L={N_LAYER}), %", [100 * r["share"] for r in rows]),
    ]
    for ax, (title, ys) in zip(axes, panels):
        ax.plot(v, ys, marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(v, [f"{x // 1024}k" if x % 1024 == 0 else str(x) for x in v])
        ax.set_xlabel("vocab size")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def markdown(rows: list[dict], meta: dict) -> str:
    """The tokenizer section: command and load, corpus, table, plot, and a computed reading."""
    base = rows[0]
    args = meta.get("args", {})
    lines = [
        "# Experiment: vocabulary size (4k ... 32k)",
        "",
        header(meta)
        + " Training time includes counting the corpus's pieces, the same work at every vocab size.",
        "",
        f"Corpus: {args.get('corpus_desc', '(not recorded)')}: {args.get('n_docs', '?')} documents; every 10th document held out ({base['held_mb']:.2f} MB), the rest "
        f"({base['train_mb']:.2f} MB) used for training. Tokenizer: our byte-level BPE, GPT-4 split pattern, "
        f"`<|endoftext|>` special. Model for the parameter share: width {D_MODEL}, {N_LAYER} layers, "
        f"non-embedding params 12*L*d^2 = {NON_EMBEDDING / 1e6:.1f}M, tied input/output embedding V*d.",
        "",
        "| vocab | train time (s) | held-out bytes/token | tokens vs smallest vocab | embedding params | embedding share |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['vocab']} | {r['seconds']:.2f} | {r['bytes_per_token']:.3f} | "
            f"{base['bytes_per_token'] / r['bytes_per_token']:.3f}x | {r['embedding'] / 1e6:.2f}M | "
            f"{100 * r['share']:.1f}% |"
        )
    first, last = rows[0], rows[-1]
    lines += [
        "",
        "![vocab size trade-off](vocab_size.png)",
        "",
        "Reading: going from {a} to {b} ids shortens the held-out text by {c:.0f}% (same bytes, fewer tokens, so a "
        "fixed context window sees {d:.0f}% more text), while the embedding grows from {e:.0f}% to {f:.0f}% of this "
        "small model's parameters and training takes {g:.1f}x as long{h}. Whether the shorter sequences pay for the "
        "bigger softmax and embedding is measured in bits per byte by training models (`--downstream`, next section).".format(
            a=first["vocab"],
            b=last["vocab"],
            c=100 * (1 - first["bytes_per_token"] / last["bytes_per_token"]),
            d=100 * (last["bytes_per_token"] / first["bytes_per_token"] - 1),
            e=100 * first["share"],
            f=100 * last["share"],
            g=last["seconds"] / first["seconds"],
            h=""
            if load_level(meta) == "idle"
            else " in this run (wall clock on a loaded machine: not a reliable speed comparison)",
        ),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ downstream models
BODY_D, BODY_L = 128, 4  # width and depth of the downstream models
BODY = [f"model.n_layer={BODY_L}", "model.n_head=4", f"model.d_model={BODY_D}", "model.max_seq_len=128"]
BLOCK, BATCH = 128, 16


def _encode(tok, docs: list[str]):  # type: ignore[no-untyped-def]
    """Documents -> one uint array with <|endoftext|> after each (when the tokenizer has it)."""
    import numpy as np

    eot = tok.special_tokens.get("<|endoftext|>")
    ids: list[int] = []
    for doc_ids in tok.encode_batch(docs):
        ids += doc_ids + ([eot] if eot is not None else [])
    return np.asarray(ids, dtype=np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)


def _limit(docs: list[str], mb: float) -> tuple[list[str], int]:
    """The first documents up to ``mb`` MB of UTF-8, and their byte count."""
    out, size = [], 0
    for d in docs:
        if size >= mb * 1e6:
            break
        out.append(d)
        size += len(d.encode("utf-8"))
    return out, size


def heldout_bpb(model_dir: Path, val_ids, val_bytes: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(mean loss in nats/token, bits per byte) over all held-out tokens in non-overlapping windows."""
    import math

    import torch
    import torch.nn.functional as F

    from nanoforge.core_model.checkpoint import load_model

    model = load_model(model_dir).eval()
    ids = torch.from_numpy(val_ids.astype("int64"))
    n = (len(ids) - 1) // BLOCK * BLOCK
    x = ids[:n].view(-1, BLOCK)  # (N, T)
    y = ids[1 : n + 1].view(-1, BLOCK)  # (N, T)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), 64):
            logits = model(x[i : i + 64])  # (b, T, V)
            total += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y[i : i + 64].reshape(-1), reduction="sum"
            ).item()
    nats = total / n
    return nats, nats / math.log(2) * len(val_ids) / val_bytes


def downstream(docs: list[str], toks: dict, args: argparse.Namespace) -> list[dict]:
    """Train one small model per vocab at equal training FLOPs; held-out bits per byte for each."""
    from nanoforge.core_model.info import flops_per_token
    from nanoforge.trainer.config import load_config
    from nanoforge.trainer.data import open_data
    from nanoforge.trainer.prepare import write_arrays
    from nanoforge.trainer.pretrain import resolve_config
    from nanoforge.trainer.pretrain import run as pretrain

    train, size = _limit([d for i, d in enumerate(docs) if i % 10], args.train_mb)
    held, held_bytes = _limit(docs[::10], args.val_mb)
    vocabs = sorted(toks)
    arms = [(v, "equal FLOPs") for v in vocabs]
    if args.equal_tokens:
        arms += [(v, "equal tokens") for v in vocabs[1:]]

    def cfg_for(vocab: int, data: Path, steps: int):  # type: ignore[no-untyped-def]
        warm = max(1, steps // 10)
        return load_config(
            "shakespeare-char",
            [
                *BODY,
                f"data.dir={data}",
                "model.vocab_size=null",
                f"train.batch_size={BATCH}",
                f"train.block_size={BLOCK}",
                f"train.max_iters={steps}",
                f"train.eval_interval={steps}",
                "train.eval_iters=5",
                "train.log_interval=10",
                f"train.threads={args.threads}",
                "train.device=cpu",
                "optim.lr=2e-3",
                "schedule.min_lr=2e-4",
                f"schedule.warmup_iters={warm}",
                f"schedule.decay_iters={steps}",
                f"checkpoint.interval={steps}",
                "checkpoint.keep_last=1",
                "log.tensorboard=false",
                "log.progress=false",
            ],
        )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        datas, flops, n_train = {}, {}, {}
        for v in vocabs:
            tok = toks[v]
            tr, va = _encode(tok, train), _encode(tok, held)
            datas[v] = (Path(tmp) / f"data{v}", va)
            write_arrays(
                datas[v][0], {"train": tr, "val": va}, tok, {"train": size, "val": held_bytes}, ["corpus"]
            )
            model_cfg = resolve_config(cfg_for(v, datas[v][0], 10), open_data(datas[v][0])).model_config()
            flops[v] = flops_per_token(model_cfg, BLOCK)["training"]
            n_train[v] = len(tr)
        budget = args.model_steps * BATCH * BLOCK * flops[vocabs[0]]
        for v, kind in arms:
            steps = args.model_steps if kind == "equal tokens" else round(budget / (BATCH * BLOCK * flops[v]))
            data, val_ids = datas[v]
            curve: list[tuple[int, float]] = []
            out = Path(tmp) / f"run{v}-{kind.split()[1]}"
            summary = pretrain(
                cfg_for(v, data, steps),
                out,
                on_log=lambda r, c=curve: c.append((r["step"], r["loss"])) if r["kind"] == "train" else None,
            )
            nats, bpb = heldout_bpb(Path(summary["final"]), val_ids, held_bytes)
            tokens = steps * BATCH * BLOCK
            rows.append(
                {
                    "vocab": v,
                    "arm": kind,
                    "steps": steps,
                    "tokens": tokens,
                    "train_bytes_seen": tokens * size / n_train[v],
                    "flops": tokens * flops[v],
                    "flops_per_token": flops[v],
                    "val_tokens": len(val_ids),
                    "val_bytes": held_bytes,
                    "heldout_loss": nats,
                    "heldout_bpb": bpb,
                    "wall_s": summary["wall_s"],
                    "tokens_per_s": summary["tokens_per_s"],
                    "curve": curve,
                }
            )
            r = rows[-1]
            print(
                f"vocab {v:6d} ({kind}): {steps} steps, {tokens:,} tokens, {r['flops'] / 1e12:.2f} TFLOP, "
                f"held-out {nats:.4f} nats/token = {bpb:.4f} bits/byte, {r['wall_s']:.0f} s",
                flush=True,
            )
    return rows


def plot_downstream(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in rows:
        steps, losses = zip(*r["curve"])
        flops = [s * BATCH * BLOCK * r["flops_per_token"] / 1e12 for s in steps]
        bpt = r["val_tokens"] / r["val_bytes"]  # tokens per byte of this vocab on the held-out text
        label = f"{r['vocab'] // 1024}k, {r['arm']}"
        axes[0].plot(flops, [x / 0.6931471805599453 * bpt for x in losses], label=label, lw=1.2)
    axes[0].set_xlabel("training compute (TFLOP)")
    axes[0].set_ylabel("train loss in bits per byte (approx.)")
    axes[0].set_title("train loss vs compute", fontsize=10)
    names = [f"{r['vocab'] // 1024}k\n{r['arm']}" for r in rows]
    axes[1].bar(names, [r["heldout_bpb"] for r in rows], color=["C0", "C1", "C2", "C3"][: len(rows)])
    for i, r in enumerate(rows):
        axes[1].text(i, r["heldout_bpb"], f"{r['heldout_bpb']:.3f}", ha="center", va="bottom", fontsize=9)
    axes[1].set_ylabel("held-out bits per byte (lower = better)")
    axes[1].set_title("downstream bits per byte", fontsize=10)
    lo = min(r["heldout_bpb"] for r in rows)
    axes[1].set_ylim(lo * 0.9, max(r["heldout_bpb"] for r in rows) * 1.03)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path)


def markdown_downstream(rows: list[dict], meta: dict, tok_meta: dict) -> str:
    """The downstream section: its own command line when it comes from another run, table, plot, meaning."""
    args = meta.get("args", {})
    same = meta.get("command") == tok_meta.get("command") and meta.get("date") == tok_meta.get("date")
    lines = [
        "",
        "## Downstream: bits per byte of small models at equal training compute",
        "",
        *([] if same else ["From another run than the section above. " + header(meta), ""]),
        f"One GPT per vocab (4 layers, 4 heads, width 128, block {BLOCK}, batch {BATCH}, learned positions, tied "
        "embeddings, AdamW lr 2e-3 with 10% warmup then cosine to 2e-4, clip 1.0, seed 1337), trained with "
        f"`nanoforge.trainer.pretrain.run` on the first {args['train_mb']:g} MB of the training documents, "
        f"{args['threads']} torch thread(s). **Equal compute** = equal training FLOPs counted by "
        "`flops_per_token(...)['training']` (6 x matmul parameters including the LM head, + attention) x tokens: "
        f"the {rows[0]['vocab']} vocab trains {rows[0]['steps']} steps, the others as many steps as the same FLOPs "
        "buy (a bigger vocab costs more FLOPs per token through its LM head, so it sees fewer tokens, though each "
        "token carries more bytes). Held-out: the first "
        f"{args['val_mb']:g} MB of the held-out documents, every token scored in non-overlapping {BLOCK}-token windows; "
        "bits per byte = mean loss / ln 2 x held-out tokens / held-out bytes.",
        "",
        "| vocab | arm | steps | train tokens | train bytes seen | FLOPs/token | train compute (TFLOP) | held-out loss "
        "(nats/token) | held-out bits/byte | train wall (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['vocab']} | {r['arm']} | {r['steps']} | {r['tokens']:,} | {r['train_bytes_seen'] / 1e6:.2f} MB | "
            f"{r['flops_per_token'] / 1e6:.1f}M | {r['flops'] / 1e12:.2f} | {r['heldout_loss']:.4f} | "
            f"**{r['heldout_bpb']:.4f}** | {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "![downstream bits per byte](vocab_size_downstream.png)",
        "",
        "### What the downstream result means",
        "",
        interpret_downstream(rows),
    ]
    return "\n".join(lines) + "\n"


def head_share(vocab: int, d_model: int, n_layer: int) -> float:
    """Share of the matmul parameters in a tied LM head of ``vocab`` rows: V*d / (V*d + 12*L*d^2).

    Example: ``head_share(8192, 128, 4)`` -> 0.571 (1.05M head vs 0.79M body).
    """
    return vocab * d_model / (vocab * d_model + 12 * n_layer * d_model**2)


def interpret_downstream(rows: list[dict]) -> str:
    """The downstream bullets, each computed from the rows (nothing here is written before the run)."""
    eq = {r["vocab"]: r for r in rows if r["arm"] == "equal FLOPs"}
    et = {r["vocab"]: r for r in rows if r["arm"] == "equal tokens"}
    d, n_layer = BODY_D, BODY_L
    small, big = min(eq), max(eq)
    s, b = eq[small], eq[big]
    bpt = {v: r["train_bytes_seen"] / r["tokens"] for v, r in eq.items()}  # bytes per token, training text
    out = []
    if small != big:
        win, lose = (s, b) if s["heldout_bpb"] < b["heldout_bpb"] else (b, s)
        text = (
            f"**At equal training compute the {win['vocab']} vocabulary wins on this small model: "
            f"{win['heldout_bpb']:.3f} vs {lose['heldout_bpb']:.3f} bits per byte** on the same held-out text "
            f"({s['flops'] / 1e12:.1f} vs {b['flops'] / 1e12:.1f} TFLOP of training)."
        )
        text += (
            f" Where the FLOPs go: with a width-{d}, {n_layer}-layer body ({12 * n_layer * d * d / 1e6:.2f}M "
            f"non-embedding matmul parameters) a training token costs {s['flops_per_token'] / 1e6:.1f}M FLOPs at "
            f"{small} and {b['flops_per_token'] / 1e6:.1f}M at {big}, because the tied LM head is "
            f"{head_share(small, d, n_layer):.0%} and {head_share(big, d, n_layer):.0%} of the matmul "
            f"parameters. The same compute buys the {big} model {s['steps'] / b['steps']:.1f}x fewer tokens and "
            f"optimizer steps ({b['steps']} vs {s['steps']}), while each of its tokens carries "
            f"{bpt[big] / bpt[small] - 1:.0%} more bytes ({bpt[big]:.2f} vs {bpt[small]:.2f} bytes/token on the "
            f"training text): it sees {b['train_bytes_seen'] / 1e6:.2f} MB of text vs "
            f"{s['train_bytes_seen'] / 1e6:.2f} MB."
        )
        out.append(text)
    if big in et and small != big:
        t = et[big]
        per_step = t["heldout_bpb"] < s["heldout_bpb"]
        w, lo = (t, s) if per_step else (s, t)
        out.append(
            f"**At equal tokens (equal steps, {t['steps']}) the {w['vocab']} vocabulary wins: "
            f"{w['heldout_bpb']:.3f} vs {lo['heldout_bpb']:.3f} bits per byte**, "
            f"{1 - w['heldout_bpb'] / lo['heldout_bpb']:.1%} fewer bits; the {big} run costs "
            f"{t['flops'] / s['flops']:.1f}x the compute ({t['flops'] / 1e12:.1f} vs {s['flops'] / 1e12:.1f} TFLOP)."
            + (
                " The bigger vocabulary is better per step and worse per FLOP at this size."
                if per_step and s["heldout_bpb"] < b["heldout_bpb"]
                else ""
            )
        )
    if small != big and s["heldout_bpb"] < b["heldout_bpb"]:
        out.append(
            'So "a bigger vocab compresses better" (section above) turns into better bits per byte for the '
            "compute only when the body is large enough that the LM head is a small share of the work: at "
            f"GPT-2 small's scale (width 768, 12 layers) a 50,257-id head is {head_share(50257, 768, 12):.0%} of "
            f"the matmul parameters; here a {big}-id head is {head_share(big, d, n_layer):.0%}. Among the "
            f"vocabularies trained here, {small} is the better choice for this model size at fixed compute "
            "(smaller ones were not trained downstream; tools/demo.py trains a 4096-id tokenizer by default for "
            "its width-128 model)."
        )
    pairs = [(s, b)] + ([(s, et[big])] if big in et else [])
    gaps = " and ".join(
        f"{abs(x['heldout_bpb'] - y['heldout_bpb']) / x['heldout_bpb']:.1%}" for x, y in pairs
    )
    out.append(
        f"Limits: one seed per arm and no seed repeats, so the run cannot measure seed-to-seed noise (the gaps "
        f"above are {gaps} of the bits per byte, but how much of that seeds alone would move is unmeasured); "
        f"short runs (the equal-FLOPs {big} model trains only {b['steps']} steps, so this compares early "
        "training); learning rate and warmup share not "
        "tuned per vocab. Training is deterministic on CPU, so the same command and seed should reproduce the "
        "numbers. Wall times depend on the machine's load and are not a speed comparison; the FLOPs column is "
        "the cost measure."
    )
    return "\n".join("- " + x for x in out)


def render(out: Path, with_downstream: bool = True) -> str:
    """Rewrite vocab_size.md and the plots in ``out`` from the saved JSON files (no training).

    Args:
        out: folder with ``vocab_size.json`` (required) and ``vocab_size_downstream.json`` (optional).
        with_downstream: include the downstream section when its JSON exists.
    """
    meta, rows = load_results(out / "vocab_size.json")
    plot(rows, out / "vocab_size.png")
    text = markdown(rows, meta)
    down = out / "vocab_size_downstream.json"
    if with_downstream and down.is_file():
        dmeta, drows = load_results(down)
        plot_downstream(drows, out / "vocab_size_downstream.png")
        text += markdown_downstream(drows, dmeta, meta)
    write_text(out / "vocab_size.md", text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", nargs="+", default=["stdlib"], help="'stdlib' or files, directories, globs"
    )
    parser.add_argument("--max-mb", type=float, default=20.0, help="use at most this much text")
    parser.add_argument("--vocabs", default="4096,8192,16384,32768", help="comma-separated vocab sizes")
    parser.add_argument(
        "--out", default=str(ROOT / "docs" / "experiments"), help="directory for the .md, .png and .json"
    )
    parser.add_argument(
        "--downstream",
        default="",
        help="comma-separated vocabs (from --vocabs) to train models for, e.g. 8192,32768",
    )
    parser.add_argument("--model-steps", type=int, default=300, help="steps of the smallest downstream vocab")
    parser.add_argument(
        "--equal-tokens", action="store_true", help="also train the bigger vocabs on equal tokens"
    )
    parser.add_argument("--train-mb", type=float, default=4.0, help="training text for the downstream models")
    parser.add_argument("--val-mb", type=float, default=0.5, help="held-out text scored for bits per byte")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the downstream models")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite vocab_size.md and plots from --out's JSON files"
    )
    args = parser.parse_args()
    out = Path(args.out)
    if args.render_only:
        print(render(out))
        return
    vocabs = sorted(int(v) for v in args.vocabs.split(","))
    down = sorted(int(v) for v in args.downstream.split(",") if v)
    if any(v not in vocabs for v in down):
        raise SystemExit(f"error: --downstream {down} must be among --vocabs {vocabs}")
    load0 = os.getloadavg()[0]
    docs = load_docs(args.corpus, args.max_mb)
    toks: dict = {}
    rows = run(docs, vocabs, toks)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join([Path(__file__).resolve().relative_to(ROOT).as_posix(), *sys.argv[1:]])
    stdlib = "the local Python standard library (*.py, *.txt, *.rst; see the script docstring)"
    name = stdlib if args.corpus == ["stdlib"] else " ".join(args.corpus)
    opts = {k: v for k, v in vars(args).items() if k not in ("out", "render_only")}
    opts |= {"corpus_desc": f"{name}, first {args.max_mb:g} MB", "n_docs": len(docs)}
    drows = downstream(docs, {v: toks[v] for v in down}, args) if down else []
    meta = run_meta(cmd, opts, load0)
    if down:
        save_results(out / "vocab_size_downstream.json", meta, drows)
    save_results(out / "vocab_size.json", meta, rows)
    text = render(out, with_downstream=bool(down))
    print(text)
    print(f"wrote {out / 'vocab_size.md'}, its plots and JSON results")


if __name__ == "__main__":
    main()
