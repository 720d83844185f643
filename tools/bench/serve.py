"""Serving benchmark: the continuous-batching engine under N concurrent clients vs one request at a time.

    .venv/bin/python tools/bench/serve.py                          # writes docs/bench/serve.md
    .venv/bin/python tools/bench/serve.py --clients 1,4 --requests 8 --no-write
    .venv/bin/python tools/bench/serve.py --soak 60                # soak section of docs/bench/serve.md

Setup: a random Llama-shaped model (``--layers``/``--width``, fp32, CPU, ``--threads`` torch threads) and
random prompts of ``--prompt-min``..``--prompt-max`` tokens; every request generates exactly ``--new``
tokens greedily (no stop token), so all modes do the same work. Modes, in one run:

* ``engine, C clients``: C asyncio clients each send requests back to back through ``AsyncEngine`` (the
  engine thread batches whatever is in flight), ``--requests`` requests in all;
* ``gRPC, C clients`` (``--grpc-clients``): the same through H8's gRPC server (``build_grpc_server`` over a
  ``ServingModel``, loopback, in the same process and event loop as the clients) with
  ``AsyncInferenceClient.generate_stream`` — so the difference to the engine row is the text layer plus gRPC;
* ``one at a time (ours)``: ``core_model.generate`` per request, sequentially (the same model);
* ``one at a time (transformers)``: the same weights exported with ``export_hf`` and run with
  ``LlamaForCausalLM.generate`` (greedy, KV cache) per request, sequentially.

Modes run round-robin for ``--repeats`` rounds and each mode's fastest run is kept (on a shared machine
interference only ever slows a run down). Reported per mode: throughput (generated tokens / wall time), time
to first token p50/p99 and inter-token latency p50/p99 (streamed modes; gaps between a request's
consecutive tokens), and the throughput ratios to both one-at-a-time modes. The target is >= 4x at 16
clients.
Soak (``--soak SECONDS``, instead of the throughput table): ``nanoforge serve`` runs in its OWN process over
a saved random model; ``--soak-streams`` asyncio gRPC streaming clients send requests back to back for
SECONDS: ``--cancel-frac`` of them hang up after a random number of tokens, ``--deadline-frac`` carry a
short random deadline (DEADLINE_EXCEEDED is then an expected outcome), half share one of four 64-token
prefixes (prefix-cache pins and evictions), the rest run to their ``max_new_tokens`` and must end with
finish reason LENGTH and exactly that many tokens. The server's RSS (``/proc/PID/status``) is sampled every
second; growth is measured from the end of warm-up (``--soak-warmup`` s). Afterwards the engine's gauges
(``/metrics``) must show nothing running, queued or pinned. Pass: zero unexpected outcomes, RSS growth <= 10%.

What it does not do: measure the HTTP API's throughput, or quality.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.generate import generate
from nanoforge.core_model.model import GPT, build_model
from nanoforge.inference_server.engine import AsyncEngine, Engine, EngineConfig
from nanoforge.inference_server.types import SamplingOptions

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "bench" / "serve.md"
SOAK_PREFIX = 64  # tokens of each of the soak's four shared prompt prefixes
SOAK_BEGIN, SOAK_END = "<!-- soak: written by serve.py --soak -->", "<!-- /soak -->"


def tps_of(r: dict) -> float:
    """Generated tokens per second of one run."""
    return r["tokens"] / r["wall"]


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs by nearest rank (0 for an empty list)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def make_model(args: argparse.Namespace, layers: int, width: int, max_seq_len: int | None = None) -> GPT:
    """A random Llama-shaped model: ``width // 64`` heads of 64, half as many KV heads, SwiGLU, RoPE."""
    torch.manual_seed(0)
    heads = max(1, width // 64)
    cfg = ModelConfig(
        vocab_size=args.vocab,
        n_layer=layers,
        n_head=heads,
        n_kv_head=max(1, heads // 2),
        d_model=width,
        max_seq_len=max_seq_len or args.prompt_max + args.new + 8,
        mlp="swiglu",
        norm="rmsnorm",
        positions="rope",
        tie_embeddings=False,
    )
    return build_model(cfg).eval()


async def run_engine(model: GPT, prompts: list[list[int]], clients: int, args: argparse.Namespace) -> dict:
    """C clients, each sending its share of the prompts back to back; returns timings."""
    engine = Engine(
        model,
        EngineConfig(
            max_batch_size=max(1, min(clients, args.max_batch)),
            max_len=args.prompt_max + args.new + 8,
            max_queue=len(prompts) + 1,
            prefill_chunk=args.chunk,
            prefix_cache_tokens=0,  # random prompts never share prefixes; keep the comparison plain
        ),
    )
    aeng = AsyncEngine(engine)
    opts = SamplingOptions(temperature=0.0, max_new_tokens=args.new)
    ttft: list[float] = []
    ttft_later: list[float] = []  # every client's requests after its first (not in the opening burst)
    itl: list[float] = []
    tokens = 0
    queue = list(prompts)

    async def client() -> None:
        nonlocal tokens
        first = True
        while queue:
            prompt = queue.pop()
            t0 = time.perf_counter()
            last = t0
            async for ev in aeng.stream(prompt, opts):
                now = time.perf_counter()
                if ev.token_id is None:
                    continue
                tokens += 1
                if last == t0:
                    ttft.append(now - t0)
                    if not first:
                        ttft_later.append(now - t0)
                else:
                    itl.append(now - last)
                last = now
            first = False

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    m = engine.metrics()
    await aeng.shutdown()
    return {
        "tokens": tokens,
        "wall": wall,
        "tok_s": tokens / wall,
        "ttft": ttft,
        "ttft_later": ttft_later,
        "itl": itl,
        "batch": m["max_batch_size"],
        "engine": step_split(m),
    }


def step_split(m: dict[str, float]) -> dict[str, float]:
    """Where the engine thread's time went, from ``Engine.metrics()`` counters."""
    steps = max(1.0, m["total_decode_steps"])
    return {
        "prefill_s": m["total_prefill_seconds"],
        "decode_s": m["total_decode_seconds"],
        "mean_batch": m["total_decode_rows"] / steps,
        "ms_per_step": 1000 * m["total_decode_seconds"] / steps,
        "ms_per_prefill_token": 1000 * m["total_prefill_seconds"] / max(1.0, m["total_prefill_tokens"]),
    }


def bench_tokenizer(vocab: int):
    """A byte-level tokenizer with ``vocab`` ids (artificial merges) so every model id decodes to bytes."""
    from nanoforge.tokenizer import Tokenizer

    return Tokenizer([(i % 256, i // 256) for i in range(vocab - 256)], use_fast=False)


async def run_grpc(model: GPT, prompts: list[list[int]], clients: int, args: argparse.Namespace) -> dict:
    """C gRPC streaming clients against an in-process InferenceService; returns timings."""
    from nanoforge.api.inference_client import AsyncInferenceClient
    from nanoforge.inference_server.grpc_server import build_grpc_server
    from nanoforge.inference_server.text import ServingModel

    config = EngineConfig(
        max_batch_size=max(1, min(clients, args.max_batch)),
        max_len=args.prompt_max + args.new + 8,
        max_queue=len(prompts) + 1,
        prefill_chunk=args.chunk,
        prefix_cache_tokens=0,
    )
    sm = ServingModel.from_parts(model, bench_tokenizer(args.vocab), name="bench", config=config)
    server, _health, port = build_grpc_server(sm, port=0)
    await server.start()
    client = AsyncInferenceClient(f"127.0.0.1:{port}")
    ttft: list[float] = []
    itl: list[float] = []
    tokens = 0
    queue = list(prompts)

    async def one_client() -> None:
        nonlocal tokens
        while queue:
            prompt = queue.pop()
            t0 = last = time.perf_counter()
            async for chunk in client.generate_stream(prompt, max_new_tokens=args.new, temperature=0.0):
                now = time.perf_counter()
                if not chunk.token_ids:
                    continue
                tokens += len(chunk.token_ids)
                (ttft if last == t0 else itl).append(now - last)
                last = now

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    wall = time.perf_counter() - start
    split = step_split(sm.metrics())
    await client.close()
    await server.stop(0)
    await sm.shutdown()
    return {
        "tokens": tokens,
        "wall": wall,
        "tok_s": tokens / wall,
        "ttft": ttft,
        "itl": itl,
        "batch": config.max_batch_size,
        "engine": split,
    }


def run_sequential_ours(model: GPT, prompts: list[list[int]], new: int) -> dict:
    start = time.perf_counter()
    tokens = 0
    for p in prompts:
        tokens += len(generate(model, [p], max_new_tokens=new, temperature=0.0)[0])
    wall = time.perf_counter() - start
    return {"tokens": tokens, "wall": wall}


def run_sequential_hf(model: GPT, prompts: list[list[int]], new: int) -> dict:
    from transformers import AutoModelForCausalLM

    from nanoforge.core_model.hf import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, tmp, arch="llama")
        hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    start = time.perf_counter()
    tokens = 0
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )
            tokens += out.shape[1] - len(p)
    return {"tokens": tokens, "wall": time.perf_counter() - start}


def bench_model(args: argparse.Namespace, layers: int, width: int) -> list[str]:
    """Run every mode on one model size; returns its Markdown section."""
    model = make_model(args, layers, width)
    rng = random.Random(0)
    prompts = [
        [rng.randrange(args.vocab) for _ in range(rng.randint(args.prompt_min, args.prompt_max))]
        for _ in range(args.requests)
    ]
    seq_prompts = prompts[: args.sequential_requests]
    generate(model, [prompts[0]], max_new_tokens=4, temperature=0.0)  # warm-up (allocator, kernels)

    # Every mode runs once per round, rounds repeated: interference hits all modes alike, and the fastest
    # run of each mode is kept.
    modes: list[tuple[str, Callable[[], dict]]] = [
        (
            "one at a time (ours, core_model.generate)",
            lambda: run_sequential_ours(model, seq_prompts, args.new),
        )
    ]
    if not args.no_hf:
        modes.append(
            ("one at a time (transformers generate)", lambda: run_sequential_hf(model, seq_prompts, args.new))
        )
    for c in [int(x) for x in args.clients.split(",") if x]:
        modes.append((f"engine, {c} clients", lambda c=c: asyncio.run(run_engine(model, prompts, c, args))))
    for c in [int(x) for x in args.grpc_clients.split(",") if x]:
        modes.append(
            (f"gRPC server, {c} clients", lambda c=c: asyncio.run(run_grpc(model, prompts, c, args)))
        )
    runs: dict[str, list[dict]] = {name: [] for name, _ in modes}
    for rnd in range(args.repeats):
        for name, fn in modes:
            r = fn()
            runs[name].append(r)
            print(f"{layers}x{width} round {rnd + 1}: {name}: {r['tokens']} tokens, {tps_of(r):.1f} tok/s")
    best = {name: min(rs, key=lambda r: r["wall"]) for name, rs in runs.items()}
    base_tps = tps_of(best[modes[0][0]])
    hf = best.get("one at a time (transformers generate)")
    rows = [
        "| mode | tokens/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | vs one at a time (ours) "
        "| vs one at a time (transformers) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in best.items():
        ttft = itl = "-"
        if "ttft" in r:
            ttft = f"{1000 * pct(r['ttft'], 0.5):.0f} / {1000 * pct(r['ttft'], 0.99):.0f}"
            itl = f"{1000 * pct(r['itl'], 0.5):.1f} / {1000 * pct(r['itl'], 0.99):.1f}"
            name = f"{name} (max batch {r['batch']})"
        vs_hf = f"{tps_of(r) / tps_of(hf):.2f}x" if hf else "-"
        rows.append(f"| {name} | {tps_of(r):.1f} | {ttft} | {itl} | {tps_of(r) / base_tps:.2f}x | {vs_hf} |")
    split_rows = [
        "| mode | wall (s) | engine prefill (s) | engine decode (s) | other (s) | mean decode batch "
        "| ms / decode step | ms / prefill token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in best.items():
        if "engine" in r:
            e = r["engine"]
            other = r["wall"] - e["prefill_s"] - e["decode_s"]
            split_rows.append(
                f"| {name} | {r['wall']:.1f} | {e['prefill_s']:.1f} | {e['decode_s']:.1f} | {other:.1f} "
                f"| {e['mean_batch']:.1f} | {e['ms_per_step']:.1f} | {e['ms_per_prefill_token']:.2f} |"
            )
    bound = ceiling(best, prompts, args)
    one = next((r for n, r in best.items() if n.startswith("engine, 1 ")), None)
    many = next((r for n, r in best.items() if n.startswith("engine, 16 ")), None)
    if one is not None and many is not None:
        unloaded, p99 = pct(one["ttft"], 0.5), pct(many["ttft"], 0.99)
        many_tps = tps_of(many)
        bound += (
            f"\n\nTargets at 16 clients: throughput {many_tps / base_tps:.2f}x one at a time (ours)"
            + (f", {many_tps / tps_of(hf):.2f}x transformers" if hf else "")
            + f" (target >= 4x); p99 TTFT {1000 * p99:.0f} ms = {p99 / unloaded:.1f}x the unloaded "
            f"(1 client) p50 TTFT of {1000 * unloaded:.0f} ms (target <= 5x); without each client's first "
            f"request (the opening burst) the p99 TTFT is {1000 * pct(many['ttft_later'], 0.99):.0f} ms "
            f"= {pct(many['ttft_later'], 0.99) / unloaded:.1f}x."
        )
    return [
        f"## {layers} layers, width {width} ({model.num_parameters() / 1e6:.1f}M parameters)",
        "",
        *rows,
        "",
        "Where the engine thread's time went (best run of each streamed mode; 'other' = the engine idle or "
        "waiting for the GIL, plus scheduling between steps):",
        "",
        *split_rows,
        "",
        *([bound, ""] if bound else []),
    ]


def ceiling(best: dict[str, dict], prompts: list[list[int]], args: argparse.Namespace) -> str:
    """The throughput ratio 16 clients / 1 client that the measured step costs allow (see the doc)."""
    one = next((r for n, r in best.items() if n.startswith("engine, 1 ")), None)
    many = next((r for n, r in best.items() if n.startswith("engine, 16 ")), None)
    if one is None or many is None:
        return ""
    p = sum(map(len, prompts)) / len(prompts)  # mean prompt tokens
    pre = many["engine"]["ms_per_prefill_token"]
    d1, b = one["engine"]["ms_per_step"], many["engine"]["mean_batch"]
    d16 = many["engine"]["ms_per_step"]
    alone = p * pre + (args.new - 1) * d1  # ms of engine work per request, one at a time
    batched = p * pre + (args.new - 1) * d16 / b  # the same with the decode step shared by b rows
    return (
        f"Step-cost bound at 16 clients: a request costs {p:.0f} prompt tokens x {pre:.2f} ms of prefill "
        f"(the same FLOPs batched or not) + {args.new - 1} decode steps; alone a step takes {d1:.1f} ms, at "
        f"batch {b:.1f} it takes {d16:.1f} ms shared by {b:.1f} rows, so batching can give at most "
        f"({p:.0f} x {pre:.2f} + {args.new - 1} x {d1:.1f}) / ({p:.0f} x {pre:.2f} + {args.new - 1} x "
        f"{d16:.1f} / {b:.1f}) = **{alone / batched:.2f}x** over the engine serving one client."
    )


# ------------------------------------------------------------------------------------------------ soak
def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS in /proc/{pid}/status")


def start_server_process(model_dir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, int, int]:
    """``nanoforge serve`` on loopback with free ports; returns (process, grpc port, http port)."""
    exe = shutil.which("nanoforge", path=str(Path(sys.executable).parent)) or "nanoforge"
    cmd = [exe, "serve", "--model", str(model_dir), "--port", "0", "--http-port", "0"]
    cmd += ["--max-batch-size", str(args.max_batch), "--max-queue", str(2 * args.soak_streams)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    ports: dict[str, int] = {}
    assert proc.stderr is not None
    while len(ports) < 2:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"server exited with {proc.wait()} before listening")
        m = re.match(r"(grpc|http) listening on .*:(\d+)", line)
        if m:
            ports[m.group(1)] = int(m.group(2))
    # Keep draining stderr so the server never blocks on a full pipe; echo warnings and errors.
    threading.Thread(target=lambda: [print("server:", ln, end="") for ln in proc.stderr], daemon=True).start()
    return proc, ports["grpc"], ports["http"]


def engine_gauges(http_port: int) -> dict[str, float]:
    """The ``nanoforge_engine_*`` gauges of the server's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("nanoforge_engine_"):
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("nanoforge_engine_")] = float(value)
    return out


async def soak_load(grpc_port: int, pid: int, args: argparse.Namespace) -> dict:
    """``args.soak_streams`` clients for ``args.soak`` seconds; returns outcome counts and RSS samples."""
    import grpc

    from nanoforge.api.common.v1 import common_pb2
    from nanoforge.api.inference_client import AsyncInferenceClient

    rng = random.Random(1)
    prefixes = [[rng.randrange(args.vocab) for _ in range(SOAK_PREFIX)] for _ in range(4)]
    counts = {"completed": 0, "cancelled": 0, "deadline_exceeded": 0, "deadline_finished": 0, "tokens": 0}
    unexpected: list[str] = []
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    end = t0 + args.soak

    async def sample_rss() -> None:
        while time.monotonic() < end:
            samples.append((time.monotonic() - t0, rss_mib(pid)))
            await asyncio.sleep(1.0)

    async def one_client(i: int, client: AsyncInferenceClient) -> None:
        r = random.Random(100 + i)
        while time.monotonic() < end:
            suffix = [r.randrange(args.vocab) for _ in range(r.randint(args.prompt_min, args.prompt_max))]
            prompt = (r.choice(prefixes) + suffix) if r.random() < 0.5 else suffix
            new = r.randint(8, 2 * args.new)
            roll = r.random()
            cancel_at = r.randint(1, new - 1) if roll < args.cancel_frac else None
            with_deadline = cancel_at is None and roll < args.cancel_frac + args.deadline_frac
            timeout = r.uniform(0.05, 1.5) if with_deadline else 300.0
            got, finish = 0, common_pb2.FINISH_REASON_UNSPECIFIED
            try:
                stream = client.generate_stream(prompt, max_new_tokens=new, temperature=0.8, timeout=timeout)
                async for chunk in stream:
                    got += len(chunk.token_ids)
                    finish = chunk.finish_reason or finish
                    if cancel_at is not None and got >= cancel_at:
                        break  # leaving the loop cancels the call on the server
                await stream.aclose()
            except grpc.aio.AioRpcError as e:
                if with_deadline and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    counts["deadline_exceeded"] += 1
                else:
                    unexpected.append(f"{e.code().name}: {e.details()}")
                continue
            except Exception as e:  # anything else is a bug in the server or the client
                unexpected.append(f"{type(e).__name__}: {e}")
                continue
            counts["tokens"] += got
            if cancel_at is not None:
                counts["cancelled"] += 1
            elif got == new and finish == common_pb2.FINISH_REASON_LENGTH:
                counts["deadline_finished" if with_deadline else "completed"] += 1
            else:
                unexpected.append(f"finished with {got}/{new} tokens, finish_reason {finish}")

    async with AsyncInferenceClient(f"127.0.0.1:{grpc_port}", timeout=300) as client:
        sampler = asyncio.ensure_future(sample_rss())
        await asyncio.gather(*(one_client(i, client) for i in range(args.soak_streams)))
        await sampler
    return {**counts, "unexpected": unexpected, "samples": samples, "wall": time.monotonic() - t0}


def run_soak(args: argparse.Namespace) -> tuple[str, bool]:
    """Run the soak against a server process; returns its Markdown section and whether it passed."""
    layers, width = (int(x) for x in args.models.split(",")[0].lower().split("x"))
    from nanoforge.core_model.checkpoint import save_model
    from nanoforge.tokenizer.io import save_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "soak-model"
        longest = SOAK_PREFIX + args.prompt_max + 2 * args.new  # shared prefix + suffix + most new tokens
        save_model(make_model(args, layers, width, max_seq_len=longest + 8), model_dir)
        save_tokenizer(bench_tokenizer(args.vocab), model_dir / "tokenizer")
        proc, grpc_port, http_port = start_server_process(model_dir, args)
        try:
            idle_rss = rss_mib(proc.pid)
            result = asyncio.run(soak_load(grpc_port, proc.pid, args))
            deadline = time.monotonic() + 30
            gauges = engine_gauges(http_port)
            while time.monotonic() < deadline and (gauges["running"] or gauges["inflight"]):
                time.sleep(0.2)
                gauges = engine_gauges(http_port)
            after_rss = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
    samples = result["samples"]
    warm = [rss for t, rss in samples if t >= args.soak_warmup]
    if not warm:
        raise SystemExit(f"--soak {args.soak} leaves no samples after --soak-warmup {args.soak_warmup}")
    warm_rss, final_rss, max_rss = warm[0], warm[-1], max(warm)
    growth = 100 * (final_rss - warm_rss) / warm_rss
    max_growth = 100 * (max_rss - warm_rss) / warm_rss
    leftovers = {k: gauges[k] for k in ("running", "queue_depth", "inflight", "kv_slots_used")}
    leftovers["prefix_cache_pinned_blocks"] = gauges["prefix_cache_pinned_blocks"]
    bad = result["unexpected"]
    ok = not bad and growth <= 10.0 and max_growth <= 10.0 and not any(leftovers.values())
    n = sum(result[k] for k in ("completed", "cancelled", "deadline_exceeded", "deadline_finished"))
    load = os.getloadavg()
    lines = [
        SOAK_BEGIN,
        f"## Soak: {args.soak_streams} streams with cancels and deadlines, server in its own process",
        "",
        f"Command: `python tools/bench/serve.py --soak {args.soak:g} --soak-streams {args.soak_streams} "
        f"--soak-warmup {args.soak_warmup:g} --cancel-frac {args.cancel_frac} --deadline-frac "
        f"{args.deadline_frac} --models {layers}x{width} --max-batch {args.max_batch}` "
        f"(load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs).",
        "",
        f"Model {layers}x{width} ({args.vocab} vocab, random weights), `nanoforge serve --max-batch-size "
        f"{args.max_batch}`, {args.soak_streams} concurrent gRPC streams for {result['wall']:.0f} s: "
        f"{n} requests, {result['tokens']} tokens streamed ({result['tokens'] / result['wall']:.0f} tok/s).",
        "",
        "| outcome | requests |",
        "|---|---:|",
        f"| ran to max_new_tokens (LENGTH, exact token count) | {result['completed']} |",
        f"| cancelled by the client after a random number of tokens | {result['cancelled']} |",
        f"| short deadline: DEADLINE_EXCEEDED | {result['deadline_exceeded']} |",
        f"| short deadline: finished in time | {result['deadline_finished']} |",
        f"| **unexpected errors / wrong endings** | **{len(bad)}** |",
        "",
        "| server RSS (MiB) | value |",
        "|---|---:|",
        f"| idle, before load | {idle_rss:.1f} |",
        f"| after warm-up ({args.soak_warmup:g} s) | {warm_rss:.1f} |",
        f"| final (end of load) | {final_rss:.1f} |",
        f"| max after warm-up | {max_rss:.1f} |",
        f"| growth final vs warm-up | {growth:+.1f}% |",
        f"| growth max vs warm-up | {max_growth:+.1f}% |",
        f"| idle, after load | {after_rss:.1f} |",
        "",
        "Engine gauges after the load drained: "
        + ", ".join(f"{k} {v:g}" for k, v in leftovers.items())
        + ".",
        "",
        f"Result: **{'PASS' if ok else 'FAIL'}** (criteria: zero unexpected outcomes, RSS growth <= 10% "
        "after warm-up, nothing left running or pinned).",
        "",
        "RSS samples (s: MiB): "
        + ", ".join(f"{t:.0f}: {r:.0f}" for t, r in samples[:: max(1, len(samples) // 20)]),
        "",
        *(f"- unexpected: {b}" for b in bad[:10]),
        SOAK_END,
    ]
    return "\n".join(lines) + "\n", ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="4x256,8x512", help="model sizes as LAYERSxWIDTH, comma-separated")
    ap.add_argument("--clients", default="1,4,16,64", help="comma-separated client counts")
    ap.add_argument("--grpc-clients", default="16", help="client counts for the gRPC mode ('' = skip)")
    ap.add_argument("--requests", type=int, default=64, help="requests per engine mode")
    ap.add_argument("--sequential-requests", type=int, default=16, help="requests for one-at-a-time modes")
    ap.add_argument("--new", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--prompt-min", type=int, default=16)
    ap.add_argument("--prompt-max", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--max-batch", type=int, default=32, help="engine rows (max_batch_size) cap")
    ap.add_argument("--chunk", type=int, default=256, help="prefill chunk (tokens per iteration)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPUs are shared)")
    ap.add_argument(
        "--repeats", type=int, default=3, help="rounds over all modes; the fastest run is reported"
    )
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write docs/bench/serve.md")
    ap.add_argument("--soak", type=float, default=0, help="run the soak for this many seconds instead")
    ap.add_argument("--soak-streams", type=int, default=64, help="concurrent streams of the soak")
    ap.add_argument("--soak-warmup", type=float, default=10, help="seconds before RSS growth is measured")
    ap.add_argument("--cancel-frac", type=float, default=0.3, help="soak requests cancelled mid-stream")
    ap.add_argument("--deadline-frac", type=float, default=0.1, help="soak requests with a short deadline")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.soak:
        section, ok = run_soak(args)
        print(section)
        if not args.no_write:
            write_doc(soak=section)
        raise SystemExit(0 if ok else 1)
    sections: list[str] = []
    load_start = os.getloadavg()[0]
    for spec in args.models.split(","):
        layers, width = (int(x) for x in spec.lower().split("x"))
        sections += bench_model(args, layers, width)
    soak_only = ("soak", "soak_streams", "soak_warmup", "cancel_frac", "deadline_frac")
    cmd = "python tools/bench/serve.py " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if not isinstance(v, bool) and k not in soak_only
    )
    text = "\n".join(
        [
            "# Serving benchmark: continuous batching vs one request at a time",
            "",
            f"Command: `{cmd}`",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs: 1-minute load "
            f"average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), "
            f"torch {torch.__version__}, {args.threads} threads, fp32. Models: random Llama-shaped (SwiGLU, "
            f"RoPE, GQA, heads of 64), vocab {args.vocab}. Prompts {args.prompt_min}-{args.prompt_max} "
            f"random tokens, {args.new} new tokens each (greedy, no stop). Engine and gRPC modes: "
            f"{args.requests} requests; one-at-a-time modes: {args.sequential_requests} requests.",
            "",
            *sections,
            "How to read the bound: prefill is compute-bound, so it costs the same per prompt token whether "
            "requests are batched or not, and only the decode steps are shared by the batch. When the "
            "decode step at batch 16 costs several times the step at batch 1 (the model's matmuls are "
            "compute-bound on one core once 16 rows share them), the ratio 16 clients / 1 client cannot "
            "exceed the bound whatever the scheduler does; the engine's own work between steps (scheduling, "
            "sampling, events) is the 'other' column and the gap between the bound and the measured ratio. "
            "TTFT: in the opening burst all 16 clients submit at once and the last prompt waits for about 15 "
            "prefills, which sets the overall p99; after it, every request still generates the same number "
            "of tokens, so clients stay partly in lockstep and prompts keep arriving in clumps that queue "
            "behind each other's prefills.",
            "",
            "TTFT is measured from submission, so at high client counts it includes queueing for a row; ITL is "
            "the gap between consecutive tokens of one request (it grows with the batch: one decode step serves "
            "every running request). One-at-a-time modes have no TTFT/ITL column (they are not streamed). "
            f"Modes run round-robin, {args.repeats} rounds, fastest run kept. The CPUs are shared with other "
            "jobs, so single rows vary run to run (differences under ~30% between rows doing the same work, "
            "e.g. engine with 1 client vs one at a time, are within that noise).",
            "",
        ]
    )
    print(text)
    if not args.no_write:
        write_doc(throughput=text)


def write_doc(throughput: str | None = None, soak: str | None = None) -> None:
    """Replace the throughput part and/or the soak section of docs/bench/serve.md, keeping the other."""
    old = DOC.read_text() if DOC.exists() else ""
    head, _, rest = old.partition(SOAK_BEGIN)
    old_soak = SOAK_BEGIN + rest.partition(SOAK_END)[0] + SOAK_END + "\n" if rest else ""
    text = (throughput if throughput is not None else head).rstrip("\n") + "\n\n" + (soak or old_soak)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_suffix(".md.tmp")
    with open(tmp, "w") as f:
        f.write(text.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, DOC)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
