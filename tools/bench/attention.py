"""Attention cost vs sequence length: forward+backward time and peak memory of ONE attention layer per variant.

    .venv/bin/python tools/bench/attention.py                       # full sweep, writes the docs page + PNG
    .venv/bin/python tools/bench/attention.py --lengths 256,1024 --variants softmax,linear --no-write

Setup (fixed, as the experiment asks): batch 1, width 256, 4 heads (head_dim 64), fp32, 2 CPU threads, no
positions (RoPE costs the same for every variant), causal. Every variant in ``core_model.attention.ATTENTION``
is measured through the same ``Attention`` module (q/k/v/o projections + the variant's mixer), plus
"softmax (math)", our explicit-matrix softmax kernel, and the peer: transformers' ``LlamaAttention`` with its
SDPA backend at the same width, so our softmax layer is reported as a ratio to it.

Each (variant, length) point runs in its own subprocess so that memory is isolated: peak memory is the
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` high-water mark after the runs minus the one taken just before
the first forward (so model weights, the input and torch itself are excluded; it is resident memory, the
allocator's cache included). Time is the minimum over the timed fwd+bwd repetitions after one warm-up (on a
shared machine interference only ever adds time, so the minimum is the most stable statistic).
A point is skipped (and marked so) when the previous length's time, extrapolated quadratically, predicts more
than ``--budget-s`` seconds, or when it fails or runs past the subprocess timeout.
What it does not do: measure decode (see tools/bench/decode.py) or GPU kernels.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "experiments" / "attention_cost.md"
PNG = ROOT / "docs" / "experiments" / "attention_cost.png"
RAW = ROOT / "docs" / "experiments" / "attention_cost.json"  # every point's numbers, for re-rendering
LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
WIDTH, HEADS, THREADS = 256, 4, 2
PEER = "peer: HF LlamaAttention (sdpa)"
MATH = "softmax (math)"
#: Extra rows: a registered variant run with non-default knobs -> (kind, attention_options).
EXTRA: dict[str, tuple[str, dict[str, str]]] = {
    MATH: ("softmax", {"kernel": "math"}),
    "retnet (chunkwise)": ("retnet", {"retnet_form": "chunkwise"}),
}
#: Variant knobs used here (the defaults otherwise): a 256-token window for "sliding".
SLIDING_WINDOW = 256
REPS = 7


def build_ours(variant: str, max_len: int):  # type: ignore[no-untyped-def]
    """One ``Attention`` layer of ``variant`` (or the explicit-softmax kernel for ``MATH``)."""
    from nanoforge.core_model.attention import ATTENTION
    from nanoforge.core_model.attention.base import Attention
    from nanoforge.core_model.config import ModelConfig

    kind, options = EXTRA.get(variant, (variant, {}))
    config = ModelConfig(
        vocab_size=256,
        n_layer=1,
        n_head=HEADS,
        d_model=WIDTH,
        max_seq_len=max_len,
        positions="none",
        attention=kind,
        attention_options=options,
        sliding_window=SLIDING_WINDOW if kind == "sliding" else None,
    )
    return Attention(config, ATTENTION[kind](config, 0))


def run_point(variant: str, length: int, reps: int) -> dict[str, float]:
    """Time fwd+bwd of one layer at ``length`` tokens in THIS process; returns ms and MiB."""
    import resource

    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    x = torch.randn(1, length, WIDTH, requires_grad=True)
    if variant == PEER:
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaAttention

        cfg = LlamaConfig(
            hidden_size=WIDTH,
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS,
            attn_implementation="sdpa",
        )
        layer = LlamaAttention(cfg, layer_idx=0)
        ones = torch.ones(1, length, WIDTH // HEADS)
        zeros = torch.zeros(1, length, WIDTH // HEADS)

        def fwd() -> torch.Tensor:  # cos=1, sin=0: RoPE is the identity, like our positions="none"
            return layer(x, position_embeddings=(ones, zeros), attention_mask=None)[0]
    else:
        from nanoforge.core_model.attention.base import Step

        layer = build_ours(variant, max(length, 8192))
        positions = torch.arange(length)[None]

        def fwd() -> torch.Tensor:
            return layer(x, Step(positions, None, offset=0, kv_len=length))

    def fwd_bwd() -> None:
        fwd().square().mean().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # weights + input + torch, before any pass
    fwd_bwd()  # warm-up (allocator, kernels); its peak is the same as the timed runs' and is counted
    times, cpu_times = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fwd_bwd()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if sum(times) > 3.0:  # enough samples for long points
            break
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "ms": 1000 * min(times),  # the least-disturbed run: on a shared machine noise only adds time
        "median_ms": 1000 * statistics.median(times),
        "cpu_ms": 1000
        * min(cpu_times),  # CPU time of all threads: what the work costs, barely load-dependent
        "mib": max(peak_kib - base_kib, 0) / 1024,
        "reps": len(times),
    }


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def measure(variant: str, length: int, reps: int, timeout_s: float) -> dict[str, float] | str:
    """Run one point in a fresh subprocess; a string result says why it was not measured."""
    cmd = [sys.executable, __file__, "--point", variant, str(length), "--reps", str(reps)]
    # PASSIVE: idle OpenMP threads sleep instead of spinning; with other jobs on the same 2 cores, spinning
    # threads made the same point vary 5-10x between runs, passive waiting keeps it within ~30%.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(THREADS),
        "MKL_NUM_THREADS": str(THREADS),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return f"timeout >{timeout_s:.0f}s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return "OOM" if done.returncode in (-9, 137) else f"failed: {last[:80]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep(
    variants: list[str], lengths: list[int], budget_s: float, reps: int
) -> dict[str, dict[int, object]]:
    """Measure every point, length by length, so that the variants compared at one length (and the peer)
    run minutes apart at most and see the same background load."""
    results: dict[str, dict[int, object]] = {v: {} for v in variants}
    prev: dict[str, tuple[int, float]] = {}
    for length in lengths:
        for variant in variants:
            last = prev.get(variant)
            if last is not None and last[1] / 1000 * (length / last[0]) ** 2 > budget_s:
                point: object = f"skipped (predicted >{budget_s:.0f}s)"
            else:
                point = measure(variant, length, reps, timeout_s=max(60.0, 4 * budget_s))
            results[variant][length] = point
            if isinstance(point, dict):
                prev[variant] = (length, point["ms"])
            print(
                f"{variant:>32} T={length:<5} {fmt(point, 'ms')} ms  {fmt(point, 'mib')} MiB", file=sys.stderr
            )
    return results


def growth(results: dict[str, dict[int, object]], lengths: list[int]) -> str:
    """Empirical exponent k in time ~ T^k between the two longest measured lengths of each variant."""
    lines = ["| variant | time exponent | memory exponent | between |", "|---|---:|---:|---|"]
    for variant, row in results.items():
        done = [t for t in lengths if isinstance(row.get(t), dict)]
        if len(done) < 2:
            continue
        a, b = row[done[-2]], row[done[-1]]
        span = math.log(done[-1] / done[-2])
        k_time = math.log(b["cpu_ms"] / a["cpu_ms"]) / span  # type: ignore[index]
        k_mem = math.log(max(b["mib"], 1e-3) / max(a["mib"], 1e-3)) / span  # type: ignore[index]
        lines.append(f"| {variant} | {k_time:.2f} | {k_mem:.2f} | T = {done[-2]} -> {done[-1]} |")
    return "\n".join(lines)


def fmt(point: object, key: str) -> str:
    if isinstance(point, dict):
        return f"{point[key]:.1f}" if key.endswith("ms") and point[key] < 100 else f"{point[key]:.0f}"
    return str(point)


def crossovers(results: dict[str, dict[int, object]], lengths: list[int]) -> list[str]:
    """For each variant, the first length where it is faster than our softmax layer (and stays so)."""
    base = results.get("softmax", {})
    lines = []
    for variant, row in results.items():
        if variant in ("softmax", PEER, MATH):  # the softmax family itself
            continue
        faster = [
            t
            for t in lengths
            if isinstance(row.get(t), dict)
            and isinstance(base.get(t), dict)
            and row[t]["cpu_ms"] < base[t]["cpu_ms"]
        ]  # type: ignore[index]
        first = next(
            (
                t
                for t in lengths
                if t in faster
                and all(
                    u in faster
                    for u in lengths
                    if u >= t and isinstance(row.get(u), dict) and isinstance(base.get(u), dict)
                )
            ),
            None,
        )
        lines.append(
            f"- **{variant}**: "
            + (
                f"faster than softmax from T = {first} on"
                if first
                else "never faster than softmax in this range"
            )
        )
    return lines


def table(results: dict[str, dict[int, object]], lengths: list[int], key: str) -> str:
    head = "| variant | " + " | ".join(str(t) for t in lengths) + " |"
    sep = "|---|" + "---:|" * len(lengths)
    rows = [
        f"| {v} | " + " | ".join(fmt(row.get(t), key) for t in lengths) + " |" for v, row in results.items()
    ]
    return "\n".join([head, sep, *rows])


def ratio_row(results: dict[str, dict[int, object]], lengths: list[int], key: str, label: str) -> str:
    ours, peer = results.get("softmax", {}), results.get(PEER, {})
    cells = []
    for t in lengths:
        a, b = ours.get(t), peer.get(t)
        cells.append(f"{a[key] / b[key]:.2f}" if isinstance(a, dict) and isinstance(b, dict) else "n/a")
    return f"| ours softmax / HF LlamaAttention ({label}) | " + " | ".join(cells) + " |"


def plot(results: dict[str, dict[int, object]], lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for variant, row in results.items():
        xs = [t for t in lengths if isinstance(row.get(t), dict)]
        style = "--" if variant in (PEER, MATH) else "-"
        for ax, key in zip(axes, ("cpu_ms", "mib")):
            ax.plot(xs, [row[t][key] for t in xs], style, marker="o", label=variant)  # type: ignore[index]
    for ax, title in zip(
        axes, ("fwd+bwd CPU time (ms, both threads, min of reps)", "peak RSS increase (MiB, maxrss delta)")
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"One attention layer, batch 1, width {WIDTH}, {HEADS} heads, fp32, {THREADS} CPU threads")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_atomic(path, buf.getvalue())


def write_doc(
    results: dict[str, dict[int, object]],
    lengths: list[int],
    seconds: float,
    cmd: str,
    load: tuple[float, float],
) -> None:
    import platform

    import torch

    text = f"""# Attention cost vs sequence length

One attention layer (q/k/v/o projections + the variant's token mixer), batch 1, width {WIDTH}, {HEADS} heads
(head_dim {WIDTH // HEADS}), fp32, {THREADS} CPU threads, forward + backward of `mean(y**2)`. Produced by

    {cmd}

in {seconds:.0f} s on {platform.machine()} / torch {torch.__version__}. The machine has 2 cores shared with
other jobs (1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end), so treat differences
under ~30% as noise; the shape of each curve is what this page is about. Each point ran with
`OMP_WAIT_POLICY=PASSIVE`, which on this shared machine cut run-to-run spread from 5-10x to ~30%. "sliding" uses a {SLIDING_WINDOW}-token window;
"{MATH}" is our softmax with the explicit (T x T) score matrix instead of `F.scaled_dot_product_attention`;
"retnet (chunkwise)" is RetNet with `retnet_form="chunkwise"` (the default row uses the parallel form);
"{PEER}" is transformers' layer at the same width (the peer for our softmax row).

## CPU time (ms, both threads summed, minimum of up to {REPS} repetitions after one warm-up)

`time.process_time()` around one forward + backward: the work a point costs, which other jobs on the
machine barely change (they delay it, but the delay is not counted). The growth exponents and crossovers
below use this table.

{table(results, lengths, "cpu_ms")}

## Wall-clock time (ms, minimum of the same repetitions)

What a user waits for; inflated by whatever else was running at that moment.

{table(results, lengths, "ms")}

| ratio | {" | ".join(str(t) for t in lengths)} |
|---|{"---:|" * len(lengths)}
{ratio_row(results, lengths, "cpu_ms", "CPU time")}
{ratio_row(results, lengths, "ms", "wall time")}

## Peak memory (MiB)

Measured as the increase of the process's peak resident set (`resource.getrusage` `ru_maxrss`) from just
before the first forward pass to after the last backward, one subprocess per point (so earlier points cannot hide later peaks). It includes allocator
caching, so small values are noisy; torch's own allocator statistics are not available on CPU.

{table(results, lengths, "mib")}

## How each cost grows (1 = linear in T, 2 = quadratic)

{growth(results, lengths)}

## Where the linear-time variants overtake softmax

{chr(10).join(crossovers(results, lengths))}

Reading it: "linear", "performer", "linformer" and "retnet" run a multi-token forward in their *parallel*
form, a causally masked (T x T) product that is exact and simple but O(T^2) in time and memory by design
(see each module's docstring); their linear cost is in decoding, where the recurrent state is O(1) per
token (tools/bench/decode.py). "retnet (chunkwise)" is the O(T) training form and the only row here whose
growth stays well under quadratic. "sliding" computes full masked attention when there is no decode state,
so its window saves nothing in this forward pass. Our softmax uses `F.scaled_dot_product_attention`, whose
CPU kernel does not materialise the score matrix, hence memory growing ~linearly, like the HF peer's.

![attention cost]({PNG.name})
"""
    write_atomic(DOC, text.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--variants", default=None, help="comma-separated; default: every registered variant")
    parser.add_argument("--budget-s", type=float, default=20.0, help="skip points predicted to take longer")
    parser.add_argument("--reps", type=int, default=REPS, help="timed repetitions per point (fewer past 3 s)")
    parser.add_argument(
        "--no-peer", action="store_true", help="leave out the transformers LlamaAttention row"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/")
    parser.add_argument(
        "--render-only", action="store_true", help=f"redraw the page from {RAW.name}, no runs"
    )
    parser.add_argument("--point", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(run_point(args.point[0], int(args.point[1]), args.reps)))
        return
    from nanoforge.core_model.attention import ATTENTION

    lengths = [int(t) for t in args.lengths.split(",")]
    variants = (
        args.variants.split(",") if args.variants else [*ATTENTION, *EXTRA] + ([] if args.no_peer else [PEER])
    )
    if args.render_only:
        raw = json.loads(RAW.read_text(encoding="utf-8"))
        results = {v: {int(t): p for t, p in row.items()} for v, row in raw["results"].items()}
        render(results, raw["lengths"], raw["seconds"], raw["cmd"], tuple(raw["load"]))
        return
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = sweep(variants, lengths, args.budget_s, args.reps)
    seconds = time.perf_counter() - t0
    print(table(results, lengths, "cpu_ms"))
    print(table(results, lengths, "mib"))
    print("\n".join(crossovers(results, lengths)))
    if not args.no_write:
        cmd = " ".join([".venv/bin/python", Path(__file__).relative_to(ROOT).as_posix(), *sys.argv[1:]])
        load = (load_start, os.getloadavg()[0])
        raw = {"results": results, "lengths": lengths, "seconds": seconds, "cmd": cmd, "load": load}
        write_atomic(RAW, (json.dumps(raw, indent=1) + "\n").encode())
        render(results, lengths, seconds, cmd, load)


def render(
    results: dict[str, dict[int, object]],
    lengths: list[int],
    seconds: float,
    cmd: str,
    load: tuple[float, float],
) -> None:
    """Write the PNG and the Markdown page from measured results."""
    plot(results, lengths, PNG)
    write_doc(results, lengths, seconds, cmd, load)
    print(f"wrote {DOC.relative_to(ROOT)} and {PNG.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
