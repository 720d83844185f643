"""Serving benchmark: the continuous-batching engine under N concurrent clients vs one request at a time.

    .venv/bin/python tools/bench/serve.py                          # writes docs/bench/serve.md
    .venv/bin/python tools/bench/serve.py --clients 1,4 --requests 8 --no-write

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
What it does not do: measure the HTTP API, a server in its own process, or quality.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import tempfile
import time
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


def tps_of(r: dict) -> float:
    """Generated tokens per second of one run."""
    return r["tokens"] / r["wall"]


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs by nearest rank (0 for an empty list)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def make_model(args: argparse.Namespace, layers: int, width: int) -> GPT:
    """A random Llama-shaped model: ``width // 64`` heads of 64, half as many KV heads, SwiGLU, RoPE."""
    torch.manual_seed(0)
    heads = max(1, width // 64)
    cfg = ModelConfig(
        vocab_size=args.vocab,
        n_layer=layers,
        n_head=heads,
        n_kv_head=max(1, heads // 2),
        d_model=width,
        max_seq_len=args.prompt_max + args.new + 8,
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
    itl: list[float] = []
    tokens = 0
    queue = list(prompts)

    async def client() -> None:
        nonlocal tokens
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
                else:
                    itl.append(now - last)
                last = now

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
        "itl": itl,
        "batch": m["max_batch_size"],
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
    return [
        f"## {layers} layers, width {width} ({model.num_parameters() / 1e6:.1f}M parameters)",
        "",
        *rows,
        "",
    ]


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sections: list[str] = []
    for spec in args.models.split(","):
        layers, width = (int(x) for x in spec.lower().split("x"))
        sections += bench_model(args, layers, width)
    cmd = "python tools/bench/serve.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if not isinstance(v, bool)
    )
    text = "\n".join(
        [
            "# Serving benchmark: continuous batching vs one request at a time",
            "",
            f"Command: `{cmd}`",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), "
            f"torch {torch.__version__}, {args.threads} threads, fp32. Models: random Llama-shaped (SwiGLU, "
            f"RoPE, GQA, heads of 64), vocab {args.vocab}. Prompts {args.prompt_min}-{args.prompt_max} "
            f"random tokens, {args.new} new tokens each (greedy, no stop). Engine and gRPC modes: "
            f"{args.requests} requests; one-at-a-time modes: {args.sequential_requests} requests.",
            "",
            *sections,
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
        DOC.parent.mkdir(parents=True, exist_ok=True)
        tmp = DOC.with_suffix(".md.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, DOC)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
