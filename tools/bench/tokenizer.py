"""Tokenizer benchmark: our BPE vs HF `tokenizers` (training, compression, encoding) and vs tiktoken (encoding).

    .venv/bin/python tools/bench/tokenizer.py                 # full run (~20 MB corpus, vocab 8k and 32k)
    .venv/bin/python tools/bench/tokenizer.py --quick         # ~4 MB corpus, vocab 8k only, fewer repetitions

Corpora (one run measures everything side by side):
  - tinyshakespeare: ../shared/data/tinyshakespeare/input.txt (skipped with a message when ../shared is absent;
    this script reads it, it is never copied);
  - stdlib: the first --corpus-mb MB of the local Python standard library's *.py, *.txt and *.rst files
    (``sysconfig.get_paths()["stdlib"]``, recursive, sorted by path, site-packages excluded, files that are
    not valid UTF-8 skipped), each file followed by "\\n", written to a temp file.

Measured:
  - training wall time at each vocab size: ours (``train_bpe``, GPT-4 split pattern and GPT-2 pattern, counting
    in ``os.cpu_count()`` processes) vs HF ``tokenizers`` ByteLevel BPE (its ByteLevel pre-tokenizer uses the
    GPT-2 split regex; ``TOKENIZERS_PARALLELISM=true``; ``min_frequency=2`` like ours; fed the same documents
    with ``train_from_iterator``). Best of ``--train-reps`` (default 1) interleaved runs. Ours reads the corpus
    file in blocks (its real input path).
  - compression: UTF-8 bytes per token over the whole corpus (higher is better).
  - encode throughput (MB/s of UTF-8, best of N interleaved repetitions): one call per document in one
    thread (timed in process CPU seconds, robust to other jobs), and batched (``encode_batch`` with
    ``os.cpu_count()`` threads, wall time); ratios are medians of paired repetitions. "tiktoken (peer)" is ``tiktoken.Encoding`` built from OUR
    ranks and pattern, i.e. the same Rust core our fast path uses: the ratio shows our wrapper's overhead.
    HF is the tokenizer trained above. Our pure-Python reference encoder is shown for scale.
What it does not do: measure memory, or compare against the real cl100k/gpt2 ranks (offline: not available).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
DOC = ROOT / "docs" / "bench" / "tokenizer.md"
SPECIAL = "<|endoftext|>"


def stdlib_docs(max_bytes: int) -> list[str]:
    """The first ``max_bytes`` of stdlib *.py/*.txt/*.rst files (sorted by path), one document per file."""
    from nanoforge.tokenizer.stdlib_corpus import stdlib_source_docs

    return stdlib_source_docs(max_bytes)


def timed(
    fn: Callable[[], object], reps: int = 1, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, object]:
    """Best time of ``reps`` calls on ``clock`` (wall by default) and the last result."""
    best, out = float("inf"), None
    for _ in range(reps):
        t = clock()
        out = fn()
        best = min(best, clock() - t)
    return best, out


def train_hf(docs: list[str], vocab_size: int):  # type: ignore[no-untyped-def]
    """HF ByteLevel BPE trained on the same documents (``train_from_iterator``: ``train(files)`` would read
    line by line, so no piece could span a newline, a different statistic from ours)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(docs, trainer, length=len(docs))
    return hf


def rotated(items: list[str], k: int) -> list[str]:
    """``items`` rotated left by ``k``: each repetition starts with a different contender."""
    k %= len(items)
    return items[k:] + items[:k]


def bench_corpus(
    name: str, docs: list[str], vocabs: list[int], reps: int, encode_mb: float, train_reps: int
) -> dict:
    import tiktoken

    from nanoforge.tokenizer import train_bpe

    workers = os.cpu_count() or 1
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    print(f"\n## {name}: {len(docs)} documents, {n_bytes / 1e6:.2f} MB", flush=True)
    rows: dict = {"name": name, "docs": len(docs), "mb": n_bytes / 1e6, "train": [], "encode": None}
    rows["train_reps"] = train_reps
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.txt"
        path.write_bytes("".join(docs).encode("utf-8"))
        trained = {}
        for vocab in vocabs:
            trainers: dict[str, Callable[[], object]] = {
                "gpt4": lambda v=vocab: train_bpe(
                    path, v, "gpt4", (SPECIAL,), num_workers=workers, show_progress=False
                ),
                "gpt2": lambda v=vocab: train_bpe(
                    path, v, "gpt2", (SPECIAL,), num_workers=workers, show_progress=False
                ),
                "hf": lambda v=vocab: train_hf(docs, v),
            }
            best = dict.fromkeys(trainers, float("inf"))
            for rep in range(train_reps):  # interleaved and rotated, like the encode timings below
                for key in rotated(list(trainers), rep):
                    secs, trained[(vocab, key)] = timed(trainers[key])
                    best[key] = min(best[key], secs)
            row: dict = {"vocab": vocab}
            for key in ("gpt4", "gpt2"):
                tok = trained[(vocab, key)]
                ids = tok.encode_batch(docs, num_threads=workers)
                row[key] = {"s": best[key], "bpt": n_bytes / sum(map(len, ids)), "vocab": tok.vocab_size}
            hf = trained[(vocab, "hf")]
            enc = hf.encode_batch(docs, add_special_tokens=False)
            row["hf"] = {
                "s": best["hf"],
                "bpt": n_bytes / sum(len(e.ids) for e in enc),
                "vocab": hf.get_vocab_size(),
            }
            rows["train"].append(row)
            print(
                f"vocab {vocab}: train ours/gpt4 {row['gpt4']['s']:.2f}s ours/gpt2 {row['gpt2']['s']:.2f}s "
                f"HF {row['hf']['s']:.2f}s | bytes/token ours/gpt4 {row['gpt4']['bpt']:.3f} "
                f"ours/gpt2 {row['gpt2']['bpt']:.3f} HF {row['hf']['bpt']:.3f}",
                flush=True,
            )
    # Encode throughput on the first `encode_mb` MB of documents, with the first vocab's tokenizers.
    sample, size = [], 0
    for d in docs:
        sample.append(d)
        size += len(d.encode("utf-8"))
        if size >= encode_mb * 1e6:
            break
    tok, hf = trained[(vocabs[0], "gpt4")], trained[(vocabs[0], "hf")]
    peer = tiktoken.Encoding(
        "peer", pat_str=tok.pattern, mergeable_ranks={tok.token_bytes(i): i for i in range(tok.vocab_size - 1)},
        special_tokens=tok.special_tokens,
    )  # fmt: skip
    assert tok.backend == "tiktoken", tok.fast_unavailable_reason
    mb = size / 1e6
    contenders: dict[str, Callable[[], object]] = {
        "ours (fast path) 1 thread": lambda: [tok.encode(d) for d in sample],
        "tiktoken (peer) 1 thread": lambda: [peer.encode_ordinary(d) for d in sample],
        f"ours (fast path) batch x{workers}": lambda: tok.encode_batch(sample, num_threads=workers),
        f"tiktoken (peer) batch x{workers}": lambda: peer.encode_ordinary_batch(sample, num_threads=workers),
        "HF tokenizers 1 thread": lambda: [hf.encode(d, add_special_tokens=False) for d in sample],
        f"HF tokenizers batch x{workers}": lambda: hf.encode_batch(sample, add_special_tokens=False),
    }
    # Single-thread rows are timed in CPU seconds of this process (time.process_time): waiting for a CPU
    # taken by other jobs does not count, which keeps these rows comparable on a shared machine. Batched
    # rows use wall time (their threads are the point). Repetitions are interleaved and rotated.
    times: dict[str, list[float]] = {label: [] for label in contenders}
    for rep in range(reps):
        for label in rotated(list(contenders), rep):
            clock = time.process_time if "1 thread" in label else time.perf_counter
            times[label].append(timed(contenders[label], clock=clock)[0])
    speeds = {label: mb / min(ts) for label, ts in times.items()}
    ratios = {}
    for label, ts in times.items():  # median over repetitions of the paired ratio to the peer, same mode
        base = times[
            "tiktoken (peer) 1 thread" if "1 thread" in label else f"tiktoken (peer) batch x{workers}"
        ]
        ratios[label] = statistics.median(b / t for b, t in zip(base, ts))
    ref_sample = sample[: max(1, len(sample) // 10)]
    ref_mb = sum(len(d.encode("utf-8")) for d in ref_sample) / 1e6
    slow = type(tok)(tok.merges, pattern=tok.pattern, special_tokens=list(tok.special_tokens), use_fast=False)
    label = "ours (pure-Python reference, cold cache) 1 thread"
    secs, _ = timed(lambda: [slow.encode(d) for d in ref_sample], 1, clock=time.process_time)
    speeds[label] = ref_mb / secs
    ratios[label] = speeds[label] / speeds["tiktoken (peer) 1 thread"]
    for label, v in speeds.items():
        print(f"encode {label:52s} {v:8.2f} MB/s  ratio to peer {ratios[label]:.2f}", flush=True)
    rows["encode"] = {"mb": mb, "vocab": vocabs[0], "speeds": speeds, "ratios": ratios, "workers": workers}
    return rows


def markdown(
    results: list[dict], cmd: str, load: tuple[tuple[float, ...], tuple[float, ...]], wall: float
) -> str:
    import tiktoken
    import tokenizers

    out = [
        "# Tokenizer benchmark: nanoforge BPE vs HF `tokenizers` and tiktoken",
        "",
        f"Command: `{cmd}` (wall {wall:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, tiktoken {tiktoken.__version__}, tokenizers {tokenizers.__version__}. "
        f"Load average at start {load[0][0]:.2f} / end {load[1][0]:.2f}: the CPUs were shared with other jobs, "
        "so absolute times are noisy; ratios from the same run are the figures to read.",
        "",
        "Corpora: tinyshakespeare (`../shared/data/tinyshakespeare/input.txt`, read in place) and `stdlib`: the "
        'first N MB of the local Python standard library\'s `*.py`, `*.txt`, `*.rst` files (`sysconfig.get_paths()["stdlib"]`, '
        "recursive, sorted by path, site-packages excluded, non-UTF-8 files skipped), one document per file.",
        "",
        "Patterns: HF's ByteLevel pre-tokenizer splits with the GPT-2 regex; ours is trained with the GPT-4 (cl100k) "
        "pattern (our default) and with the GPT-2 pattern (the like-for-like comparison). Both use min_frequency 2, "
        "counting runs in parallel for both (ours: processes; HF: threads). HF is trained with `train_from_iterator` on "
        "the same documents: its `train(files)` reads files line by line, so no piece could span a newline "
        "(e.g. `\\n` + indentation in code), which costs it several % of compression on code.",
        "",
        "## Training time and compression",
        "",
        f"Training time: best of {results[0]['train_reps']} run(s) per trainer, interleaved. Compression: "
        "UTF-8 bytes per token over the whole corpus (higher is better).",
        "",
        "| corpus | vocab | ours gpt4 (s) | ours gpt2 (s) | HF (s) | time ours gpt2 / HF | bytes/token ours gpt4 | ours gpt2 | HF | compression ours gpt2 / HF |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["train"]:
            g4, g2, hf = row["gpt4"], row["gpt2"], row["hf"]
            out.append(
                f"| {r['name']} ({r['mb']:.1f} MB) | {row['vocab']} | {g4['s']:.2f} | {g2['s']:.2f} | {hf['s']:.2f} | "
                f"**{g2['s'] / hf['s']:.2f}x** | {g4['bpt']:.3f} | {g2['bpt']:.3f} | {hf['bpt']:.3f} | "
                f"**{g2['bpt'] / hf['bpt']:.4f}** |"
            )
    out += [
        "",
        "tiktoken as a peer is built from our own ranks (the real cl100k/gpt2 ranks are a download), so its "
        "bytes/token equal ours by construction (token-for-token parity is tested in test_tok_parity_tiktoken.py).",
        "",
        "Final vocab sizes (a small corpus can stop early at min_frequency 2):",
        "",
    ]
    for r in results:
        for row in r["train"]:
            out.append(
                f"- {r['name']} {row['vocab']}: ours gpt4 {row['gpt4']['vocab']}, ours gpt2 {row['gpt2']['vocab']}, "
                f"HF {row['hf']['vocab']}"
            )
    out += [
        "",
        "## Encode throughput",
        "",
        "MB/s of UTF-8 text, best of the interleaved repetitions. '1 thread' rows: one call per document, "
        "timed in CPU seconds of the process (so time spent waiting for a CPU held by other jobs does not "
        "count); batch rows: `encode_batch` over all documents, wall time. Ratio: median over repetitions of "
        "the paired time ratio to tiktoken (peer) in the same mode (the pure-Python row: ratio of best speeds). "
        "Our fast path runs tiktoken's own Rust code, so its ratio measures our Python wrapper only.",
        "",
    ]
    for r in results:
        e = r["encode"]
        sp, ratios = e["speeds"], e["ratios"]
        out += [
            f"{r['name']}: first {e['mb']:.2f} MB, vocab {e['vocab']}, GPT-4 pattern for ours/tiktoken.",
            "",
            "| encoder | MB/s | ratio to tiktoken (peer), same mode |",
            "|---|---|---|",
        ]
        for label, v in sp.items():
            out.append(f"| {label} | {v:.2f} | {ratios[label]:.2f} |")
        out.append("")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-mb", type=float, default=20.0, help="size of the stdlib corpus in MB")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4 MB stdlib corpus, vocab 8192 only, 1 MB encode sample, 3 repetitions",
    )
    parser.add_argument("--encode-mb", type=float, default=4.0, help="text used for encode throughput")
    parser.add_argument("--train-reps", type=int, default=1, help="training runs per trainer (best is kept)")
    parser.add_argument(
        "--no-write", action="store_true", help=f"print only; do not write {DOC.relative_to(ROOT)}"
    )
    args = parser.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # let HF use its threads, as our counting uses processes
    try:
        import tiktoken  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        sys.exit(f"skip: the peers are not installed ({exc}); pip install tiktoken tokenizers")
    corpus_mb = 4.0 if args.quick else args.corpus_mb
    vocabs = [8192] if args.quick else [8192, 32768]
    reps = 3 if args.quick else 5
    encode_mb = min(args.encode_mb, 1.0) if args.quick else args.encode_mb
    t0, load0 = time.perf_counter(), os.getloadavg()
    results = []
    shakespeare = SHARED / "tinyshakespeare" / "input.txt"
    if shakespeare.is_file():
        text = shakespeare.read_text(encoding="utf-8")
        results.append(
            bench_corpus(
                "tinyshakespeare",
                [p + "\n\n" for p in text.split("\n\n")],
                vocabs,
                reps,
                encode_mb,
                args.train_reps,
            )
        )
    else:
        print(f"skip: {shakespeare} is absent (../shared not mounted); benchmarking the stdlib corpus only")
    docs = stdlib_docs(int(corpus_mb * 1e6))
    results.append(bench_corpus("stdlib", docs, vocabs, reps, encode_mb, args.train_reps))
    wall = time.perf_counter() - t0
    cmd = "python " + " ".join([Path(__file__).relative_to(ROOT).as_posix(), *sys.argv[1:]])
    text = markdown(results, cmd, (load0, os.getloadavg()), wall)
    print("\n" + text)
    if not args.no_write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        tmp = DOC.with_suffix(".md.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, DOC)
        print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
