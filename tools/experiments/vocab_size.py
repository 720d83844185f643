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
What it does not do: train a model (the loss-per-byte side of the trade-off is another experiment).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


def run(docs: list[str], vocabs: list[int]) -> list[dict]:
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
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def markdown(rows: list[dict], cmd: str, corpus: str, docs: int) -> str:
    base = rows[0]
    lines = [
        "# Experiment: vocabulary size (4k ... 32k)",
        "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end: shared with other jobs, so times are indicative). "
        "Training time includes counting the corpus's pieces, the same work at every vocab size.",
        "",
        f"Corpus: {corpus}: {docs} documents; every 10th document held out ({base['held_mb']:.2f} MB), the rest "
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
        "small model's parameters and training takes {g:.1f}x as long. Whether the shorter sequences pay for the "
        "bigger softmax and embedding is measured in bits per byte by a model-training experiment, not here.".format(
            a=first["vocab"],
            b=last["vocab"],
            c=100 * (1 - first["bytes_per_token"] / last["bytes_per_token"]),
            d=100 * (last["bytes_per_token"] / first["bytes_per_token"] - 1),
            e=100 * first["share"],
            f=100 * last["share"],
            g=last["seconds"] / first["seconds"],
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", nargs="+", default=["stdlib"], help="'stdlib' or files, directories, globs"
    )
    parser.add_argument("--max-mb", type=float, default=20.0, help="use at most this much text")
    parser.add_argument("--vocabs", default="4096,8192,16384,32768", help="comma-separated vocab sizes")
    parser.add_argument(
        "--out", default=str(ROOT / "docs" / "experiments"), help="directory for the .md and .png"
    )
    args = parser.parse_args()
    vocabs = sorted(int(v) for v in args.vocabs.split(","))
    docs = load_docs(args.corpus, args.max_mb)
    rows = run(docs, vocabs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / "vocab_size.png")
    cmd = "python " + " ".join([Path(__file__).resolve().relative_to(ROOT).as_posix(), *sys.argv[1:]])
    stdlib = "the local Python standard library (*.py, *.txt, *.rst; see the script docstring)"
    name = stdlib if args.corpus == ["stdlib"] else " ".join(args.corpus)
    text = markdown(rows, cmd, f"{name}, first {args.max_mb:g} MB", len(docs))
    tmp = out / "vocab_size.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "vocab_size.md")
    print(text)
    print(f"wrote {out / 'vocab_size.md'} and {out / 'vocab_size.png'}")


if __name__ == "__main__":
    main()
