"""Cost / latency / quality sweep against the REAL server: quantization x decoding x concurrency.

    nice -n 5 .venv/bin/python tools/experiments/cost_quality_sweep.py --work out/cost_quality_sweep

1. Model: a 2-layer, width-128 BPE model (vocab 512) trained here on the first 90% of ../shared/data/tinyshakespeare
   (`nanoforge tokenizer train`, `train prepare`, `train pretrain` as subprocesses; skipped when
   WORK/run/final exists, or pass --model DIR).
2. For each quantization (fp32, int8, int4 = int4-g64) a `nanoforge serve --quantize Q --max-batch-size 16`
   child process on loopback; held-out quality from the last 10% of the text: bits per byte of held-out
   passages (Score RPC, a property of the weights) and ROUGE-L of generated continuations against the real
   ones (depends on decoding too).
3. For each decoding setting (greedy 32 tokens, greedy 64, sampling T=0.8 top-p 0.95 64 tokens) and each
   concurrency (1, 4, 16 requests in flight = decode batch size) the evaluation harness sends the same
   prompts (after a warm-up), ``--repeats`` times; per config: ROUGE-L, and the median over repeats of
   completion tokens/s (wall), p50/p99 latency, and cost per 1k requests = the server's measured
   CPU-seconds (/proc) x the cost table's $/CPU-hour (cost.DEFAULT_PRICES["local"]); the server's peak RSS.
4. The Pareto front on (ROUGE-L high, cost low, p50 latency low) comes from report.pareto_front.

Writes WORK/results.json, docs/experiments/cost_quality_sweep.png and prints the Markdown table.
What it deliberately does not do: GPU runs, RAG settings (see docs/experiments/chunking*), or tuning the
server beyond --max-batch-size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nanoforge.evaluation.backends import GrpcBackend, proc_cpu_seconds
from nanoforge.evaluation.cost import DEFAULT_PRICES
from nanoforge.evaluation.harness import RunOptions, percentile, run_system, summarise
from nanoforge.evaluation.io import write_text_atomic
from nanoforge.evaluation.prompting import PromptTemplate
from nanoforge.evaluation.report import pareto_front
from nanoforge.evaluation.task import Task

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CLI = [sys.executable, "-m", "nanoforge.cli"]
QUANTS = {"fp32": None, "int8": "int8", "int4": "int4"}
DECODING = {
    "greedy-32": {"max_new_tokens": 32, "temperature": 0.0},
    "greedy-64": {"max_new_tokens": 64, "temperature": 0.0},
    "sample-64": {"max_new_tokens": 64, "temperature": 0.8, "top_p": 0.95, "seed": 0},
}
CONCURRENCY = (1, 4, 16)
#: demo-bpe shrunk so that training takes ~1-2 min on 2 idle cores: 2 blocks of width 128, 512-token steps.
MODEL_OVERRIDES = ["model.n_layer=2", "train.batch_size=8", "train.block_size=64", "train.eval_interval=100",
                   "checkpoint.interval=1000"]  # fmt: skip


def sh(cmd: list[str], log: Path) -> None:
    """Run a CLI step, its output appended to ``log``; raise with the log tail on failure."""
    with open(log, "ab") as fh:
        rc = subprocess.call(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"}
        )
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed ({rc}): {log.read_text()[-1500:]}")


def build_model(work: Path, iters: int) -> Path:
    """Tokenizer (vocab 512) + token shards + pretraining on the first 90% of tinyshakespeare."""
    final = work / "run" / "final"
    if (final / "config.json").is_file():
        return final
    text = DATA.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    # Paragraph documents so that `prepare` can hold some out for the training loss curve.
    write_text_atomic(work / "corpus" / "train.txt", text[:cut])
    log = work / "build.log"
    sh([*CLI, "tokenizer", "train", "--input", str(work / "corpus" / "train.txt"), "--vocab-size", "512",
        "--out", str(work / "tok"), "--chat-template", "none", "--force", "--workers", "1"], log)  # fmt: skip
    sh([*CLI, "train", "prepare", "--input", str(work / "corpus" / "train.txt"), "--tokenizer",
        str(work / "tok"), "--out", str(work / "data"), "--doc-split", "paragraph"], log)  # fmt: skip
    sh([*CLI, "train", "pretrain", "--config", "demo-bpe", "--out", str(work / "run"), f"data.dir={work / 'data'}",
        f"train.max_iters={iters}", f"schedule.decay_iters={iters}", f"schedule.warmup_iters={iters // 10}",
        *MODEL_OVERRIDES, "train.threads=2", "log.progress=false", "log.tensorboard=false"], log)  # fmt: skip
    return final


def held_out(n_gen: int, n_bpb: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Prompts (300 chars) + their real 300-char continuation; bpb passages (150-char context + 200 scored).

    At ~2 bytes per token both fit the model's 256-token context (prompt + 64 new tokens; context + scored).
    """
    text = DATA.read_text(encoding="utf-8")
    tail = text[int(len(text) * 0.9) :]
    step = (len(tail) - 700) // (n_gen + n_bpb)
    gen, bpb = [], []
    for i in range(n_gen + n_bpb):
        a = i * step
        if i < n_gen:
            gen.append({"prefix": tail[a : a + 300], "rest": tail[a + 300 : a + 600]})
        else:
            bpb.append({"prefix": tail[a : a + 150], "rest": tail[a + 150 : a + 350]})
    return gen, bpb


class Server:
    """A `nanoforge serve` child process (gRPC only) on a free loopback port."""

    def __init__(self, model: Path, quantize: str | None, log: Path) -> None:
        cmd = [*CLI, "serve", "--model", str(model), "--port", "0", "--no-http", "--max-batch-size", "16"]
        if quantize:
            cmd += ["--quantize", quantize]
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh,
                                         env={**os.environ, "OMP_NUM_THREADS": "2"})  # fmt: skip
        end = time.monotonic() + 180
        while time.monotonic() < end:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("grpc listening on "):
                    self.target = f"127.0.0.1:{line.rsplit(':', 1)[1]}"
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {log.read_text()[-1500:]}")
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError("serve did not report its port in 180 s")

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid) or 0.0

    def rss_mib(self) -> float:
        """Peak resident memory of the server process (VmHWM), MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def make_task(kind: str, rows: list[dict[str, str]], sampling: dict[str, Any], metrics: list[str]) -> Task:
    return Task(name=f"shakespeare-{kind}", type=kind, records=rows, template=PromptTemplate("{{ prefix }}"),
                target_field="rest", metrics=metrics, sampling=dict(sampling))  # fmt: skip


async def run_config(server: Server, task: Task, concurrency: int) -> dict[str, Any]:
    """One harness run; CPU-seconds of the server and wall time measured around it."""
    backend = GrpcBackend(server.target, timeout=600)
    opts = RunOptions(concurrency=concurrency, n_resamples=200, retries=0)
    cpu0, t0 = server.cpu(), time.perf_counter()
    try:
        records = await run_system(task, backend, opts=opts)
    finally:
        await backend.aclose()
    wall, cpu = time.perf_counter() - t0, server.cpu() - cpu0
    summary = summarise(task, records, opts)
    failed = [r.error for r in records if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} failed records, e.g. {failed[0]}")
    lat = [r.latency_ms for r in records]
    price = DEFAULT_PRICES["local"].cpu_hour_usd
    return {
        "n": len(records),
        "metrics": {
            k: {"value": v["value"], "low": v["low"], "high": v["high"]}
            for k, v in summary["metrics"].items()
        },
        "wall_s": wall,
        "server_cpu_s": cpu,
        "completion_tokens": summary["tokens"]["completion"],
        "tokens_per_s": summary["tokens"]["completion"] / wall,
        "p50_ms": percentile(lat, 0.5),
        "p99_ms": percentile(lat, 0.99),
        "usd_per_1k": cpu / len(records) * 1000 * price / 3600,
    }


def plot(results: list[dict[str, Any]], front: set[int], out: Path) -> None:
    """Quality vs cost and vs latency (outlined: the 3-D Pareto front; dashed: each panel's 2-D front),
    and throughput vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = {"fp32": "tab:blue", "int8": "tab:orange", "int4": "tab:green"}
    markers = {"greedy-32": "o", "greedy-64": "s", "sample-64": "^"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, key, label in ((axes[0], "usd_per_1k", "USD per 1k requests (server CPU-s x $/CPU-h)"),
                           (axes[1], "p50_ms", "p50 latency (ms)")):  # fmt: skip
        for i, r in enumerate(results):
            ax.scatter(r[key], r["rouge_l"], c=colors[r["quant"]], marker=markers[r["decoding"]],
                       s=150 if i in front else 45, edgecolors="k" if i in front else "none", alpha=0.85)  # fmt: skip
        flat = pareto_front([(r[key], 0.0, r["rouge_l"]) for r in results])
        pts = sorted((results[i][key], results[i]["rouge_l"]) for i in flat)
        ax.step([p[0] for p in pts], [p[1] for p in pts], "k--", lw=0.8, where="post")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("ROUGE-L of continuation (held out)")
    handles = [Line2D([], [], ls="", marker="o", c=c, label=q) for q, c in colors.items()]
    handles += [Line2D([], [], ls="", marker=m, c="grey", label=d) for d, m in markers.items()]
    axes[0].legend(handles=handles, fontsize=7, loc="lower right")
    for q in QUANTS:
        for d in DECODING:
            rows = sorted(
                (r["concurrency"], r["tokens_per_s"])
                for r in results
                if r["quant"] == q and r["decoding"] == d
            )
            axes[2].plot(
                [x for x, _ in rows], [y for _, y in rows], marker=markers[d], c=colors[q], label=f"{q} {d}"
            )
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("concurrency = decode batch size")
    axes[2].set_ylabel("completion tokens / s (median of repeats)")
    axes[2].legend(fontsize=7, ncol=2)
    axes[0].set_title("quality vs cost (outlined: Pareto front)")
    axes[1].set_title("quality vs p50 latency")
    axes[2].set_title("throughput")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def table(results: list[dict[str, Any]], front: set[int], bpb: dict[str, float]) -> str:
    head = ("| quant | decoding | conc | ROUGE-L [95% CI] | bpb | tok/s (wall) | tok / server CPU-s | p50 ms | p99 ms "
            "| server CPU-s | USD / 1k req | Pareto |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for i, r in enumerate(results):
        lines.append(
            f"| {r['quant']} | {r['decoding']} | {r['concurrency']} | {r['rouge_l']:.3f} [{r['rouge_l_low']:.3f}, "
            f"{r['rouge_l_high']:.3f}] | {bpb[r['quant']]:.4f} | {r['tokens_per_s']:.0f} | "
            f"{r['completion_tokens'] / r['server_cpu_s']:.0f} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['server_cpu_s']:.2f} | {r['usd_per_1k']:.5f} | {'*' if i in front else ''} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "cost_quality_sweep")
    ap.add_argument("--model", type=Path, default=None, help="A model dir to serve instead of training one.")
    ap.add_argument("--iters", type=int, default=250, help="Pretraining steps.")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--n-bpb", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="Timed runs per config (median reported).")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "experiments" / "cost_quality_sweep.png")
    ap.add_argument("--replot", action="store_true", help="Only redraw the plot from WORK/results.json.")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads((args.work / "results.json").read_text())
        plot(saved["results"], set(saved["pareto"]), args.plot)
        print(table(saved["results"], set(saved["pareto"]), saved["bits_per_byte"]))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = args.model or build_model(args.work, args.iters)
    t_model = time.perf_counter() - t_start
    print(f"model {model} ready in {t_model:.0f} s", flush=True)
    gen_rows, bpb_rows = held_out(args.n_prompts, args.n_bpb)
    results: list[dict[str, Any]] = []
    bpb: dict[str, float] = {}
    rss: dict[str, float] = {}
    for quant, mode in QUANTS.items():
        server = Server(model, mode, args.work / f"serve-{quant}.log")
        try:
            # Warm-up (first calls pay for allocations and lazy init), then quality of the weights.
            asyncio.run(
                run_config(server, make_task("generate", gen_rows[:4], DECODING["greedy-32"], ["rouge_l"]), 4)
            )
            ppl = asyncio.run(run_config(server, make_task("perplexity", bpb_rows, {}, ["bits_per_byte"]), 4))
            bpb[quant] = ppl["metrics"]["bits_per_byte"]["value"]
            print(f"{quant}: bits per byte {bpb[quant]:.4f}", flush=True)
            for dec, sampling in DECODING.items():
                task = make_task("generate", gen_rows, sampling, ["rouge_l"])
                for conc in CONCURRENCY:
                    # Repeats, median of the timings: the shared machine's load spikes move single runs.
                    runs = [asyncio.run(run_config(server, task, conc)) for _ in range(args.repeats)]
                    m = runs[0]["metrics"]["rouge_l"]
                    if any(r["metrics"]["rouge_l"]["value"] != m["value"] for r in runs):
                        print(f"note: {quant} {dec} c={conc}: ROUGE-L differs between repeats", flush=True)
                    timing = {k: statistics.median(r[k] for r in runs) for k in
                              ("wall_s", "server_cpu_s", "tokens_per_s", "p50_ms", "p99_ms", "usd_per_1k")}  # fmt: skip
                    row = {"quant": quant, "decoding": dec, "concurrency": conc, "rouge_l": m["value"],
                           "rouge_l_low": m["low"], "rouge_l_high": m["high"], "n": runs[0]["n"],
                           "completion_tokens": runs[0]["completion_tokens"], "repeats": args.repeats, **timing}  # fmt: skip
                    results.append(row)
                    print(f"{quant} {dec} c={conc}: rouge_l {m['value']:.3f} {row['tokens_per_s']:.0f} tok/s "
                          f"p50 {row['p50_ms']:.0f} ms cpu {row['server_cpu_s']:.2f} s", flush=True)  # fmt: skip
            rss[quant] = server.rss_mib()
        finally:
            server.stop()
    front = set(pareto_front([(r["usd_per_1k"], r["p50_ms"], r["rouge_l"]) for r in results]))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(results, front, args.plot)
    total = time.perf_counter() - t_start
    out = {"model": str(model), "model_seconds": t_model, "total_seconds": total, "bits_per_byte": bpb,
           "server_peak_rss_mib": rss,
           "price_cpu_hour_usd": DEFAULT_PRICES["local"].cpu_hour_usd, "pareto": sorted(front), "results": results,
           "load_avg": os.getloadavg()}  # fmt: skip
    write_text_atomic(args.work / "results.json", json.dumps(out, indent=1))
    print(table(results, front, bpb))
    print("\nserver peak RSS (MiB): " + ", ".join(f"{q} {v:.0f}" for q, v in rss.items()))
    print(f"\ntotal {total:.0f} s (model {t_model:.0f} s); load average {os.getloadavg()}; plot {args.plot}")


if __name__ == "__main__":
    main()
