"""Pretraining speed against transformers' GPT-2, and the nanoGPT Shakespeare-char reference run.

    .venv/bin/python tools/bench/train.py                   # step speed: ours vs GPT2LMHeadModel
    .venv/bin/python tools/bench/train.py --shakespeare     # val loss at iter 2000 + wall time
    .venv/bin/python tools/bench/train.py --dtype bfloat16 --clock cpu   # bf16 autocast for both; CPU seconds
    .venv/bin/python tools/bench/train.py --breakdown       # where each model's step time goes, and the bound

Speed mode: the same GPT-2-shaped config for both (learned positions, LayerNorm with bias, gelu_tanh, biases,
tied embeddings, dropout 0), the same AdamW (``nanoforge.trainer.optim.build_adamw``: decay on 2-D
weights, fused when torch has it), the same random token batches, the same loss (mean cross-entropy of the
fp32 logits) and the same step (forward, backward, clip 1.0, AdamW, zero_grad). Rounds alternate between
the two models (ours, peer, ours, peer...) so that load from other processes hits both alike; the figure is
the median tokens/s over rounds, and the ratio is ours / peer. ``--sizes`` picks shapes from ``SIZES``.

Shakespeare mode: nanoGPT's CPU recipe (the shipped ``shakespeare-char`` config) on
../shared/data/tinyshakespeare/input.txt with byte ids 0..255 and nanoGPT's split (first 90% of the text for
train, last 10% for val), trained with ``nanoforge.trainer.pretrain.run``. nanoGPT reports val loss 1.88
at iter 2000 (on this machine: 1.886 in about 2 minutes). Skipped cleanly when ../shared is absent.
Breakdown mode: ``torch.profiler`` over a few steps of each model, the step time split into GEMMs
(``mm``/``addmm``/``bmm``, with their FLOPs), attention kernels, the loss, the optimizer step and the rest; the
GEMMs' achieved GFLOP/s against a 2048^3 fp32 matmul timed in the same process (the machine's practical
peak); and the largest ratio the model side could still reach: the peer's unprofiled step time over ours'
GEMM + attention time, i.e. as if everything else in our step cost nothing. The profiler adds a fixed cost
to every op, so its per-category "other" is inflated (much more for the peer, which runs more small ops);
the step time without the profiler (``--clock``) is printed beside it and used for the bound.
What it does not do: GPU runs, or anything that is a test (no assertions on speed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def _peer(n_layer: int, n_head: int, d_model: int, block: int, vocab: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=block,
        n_embd=d_model,
        n_layer=n_layer,
        n_head=n_head,
        activation_function="gelu_new",  # = gelu_tanh
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg)


def _ours(n_layer: int, n_head: int, d_model: int, block: int, vocab: int) -> torch.nn.Module:
    from nanoforge.core_model.config import ModelConfig
    from nanoforge.core_model.model import build_model

    cfg = ModelConfig(
        vocab_size=vocab,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
        max_seq_len=block,
        mlp="gelu_tanh",
        norm="layernorm",
        positions="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
    )
    return build_model(cfg)


def _stepper(model: torch.nn.Module, hf: bool, dtype: str = "float32", compile: bool = False):  # type: ignore[no-untyped-def]
    from nanoforge.trainer.optim import build_adamw
    from nanoforge.trainer.pretrain import AUTOCAST

    device = torch.device("cpu")
    opt = build_adamw(
        model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8, impl="auto", device=device
    )
    model.train()
    fwd = torch.compile(model) if compile else model

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with AUTOCAST[dtype](device):  # the recipe's autocast table, applied to both models alike
            logits = fwd(x).logits if hf else fwd(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


#: Benchmark shapes: (n_layer, n_head, d_model, block, vocab, batch).
SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "shakespeare": (4, 4, 128, 64, 256, 12),  # the shakespeare-char recipe's shape (0.8M parameters)
    "small": (4, 4, 256, 128, 4096, 8),  # a small BPE model (4.2M parameters)
    "medium": (6, 6, 384, 256, 8192, 4),  # 14M parameters
}


#: --clock: wall seconds, or this process's CPU seconds (all threads; with 1 thread = compute time, which
#: other jobs on a shared machine barely change).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def speed(args: argparse.Namespace) -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.rounds} rounds x {args.steps} steps, "
        f"dtype {args.dtype}{', torch.compile' if args.compile else ''}, clock {args.clock}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| size | shape (L, H, C, T, V, B) | params | nanoforge tok/s | transformers tok/s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    clock = CLOCKS[args.clock]
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise SystemExit(f"--sizes: unknown size {size!r}; accepted: {', '.join(SIZES)}")
        n_layer, n_head, d_model, block, vocab, batch = SIZES[size]
        torch.manual_seed(0)
        shape = (n_layer, n_head, d_model, block, vocab)
        models = {"ours": (_ours(*shape), False), "peer": (_peer(*shape), True)}
        n_params = sum(p.numel() for p in models["ours"][0].parameters())
        assert n_params == sum(p.numel() for p in models["peer"][0].parameters()), "configs differ"
        steppers = {k: _stepper(m, hf, args.dtype, args.compile) for k, (m, hf) in models.items()}
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(vocab, (batch, block + 1), generator=g) for _ in range(args.steps)]
        tokens = batch * block * args.steps
        for step in steppers.values():  # warm-up
            for b in batches[:3]:
                step(b[:, :-1], b[:, 1:])
        rates: dict[str, list[float]] = {k: [] for k in steppers}
        for _ in range(args.rounds):  # alternate so that outside load hits both alike
            for name, step in steppers.items():
                t0 = clock()
                for b in batches:
                    step(b[:, :-1], b[:, 1:])
                rates[name].append(tokens / (clock() - t0))
        ours, peer = statistics.median(rates["ours"]), statistics.median(rates["peer"])
        print(
            f"| {size} | {SIZES[size]} | {n_params:,} | {ours:,.0f} | {peer:,.0f} | {ours / peer:.2f}x |",
            flush=True,
        )


#: --breakdown: profiler op name prefix -> category (first match wins; everything else is "other").
CATEGORIES: dict[str, str] = {
    "aten::mm": "gemm",
    "aten::addmm": "gemm",
    "aten::bmm": "gemm",
    "aten::_scaled_dot_product": "attention",
    "aten::_log_softmax": "loss",
    "aten::nll_loss": "loss",
    "aten::_fused_adam": "optimizer",
    "aten::_foreach": "optimizer",
    "aten::linalg_vector_norm": "optimizer",  # gradient clipping
}


def _category(op: str) -> str:
    return next((c for prefix, c in CATEGORIES.items() if op.startswith(prefix)), "other")


def _sgemm_peak(n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of an n x n x n fp32 matmul: the practical GEMM ceiling of this machine and thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def breakdown(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    peak = _sgemm_peak()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), dtype {args.dtype}, "
        f"load average {os.getloadavg()[0]:.1f}; 2048^3 fp32 matmul: {peak:.0f} GFLOP/s"
    )
    cats = ["gemm", "attention", "loss", "optimizer", "other"]
    print(
        "| size | model | ms/step (no profiler) | ms/step (profiled) | "
        + " | ".join(f"{c} ms" for c in cats)
        + " | GEMM GFLOP/step | GEMM GFLOP/s |"
    )
    print("|---|---|---:|---:|" + "---:|" * (len(cats) + 2))
    clock = CLOCKS[args.clock]
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise SystemExit(f"--sizes: unknown size {size!r}; accepted: {', '.join(SIZES)}")
        n_layer, n_head, d_model, block, vocab, batch = SIZES[size]
        shape = (n_layer, n_head, d_model, block, vocab)
        totals: dict[str, float] = {}
        for name, (build, hf) in {"ours": (_ours, False), "peer": (_peer, True)}.items():
            torch.manual_seed(0)
            step = _stepper(build(*shape), hf, args.dtype, args.compile)
            g = torch.Generator().manual_seed(0)
            batches = [torch.randint(vocab, (batch, block + 1), generator=g) for _ in range(args.steps)]
            for b in batches[:3]:
                step(b[:, :-1], b[:, 1:])
            t0 = clock()
            for b in batches:
                step(b[:, :-1], b[:, 1:])
            totals[name + "_plain"] = (clock() - t0) * 1e3 / args.steps
            with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
                for b in batches:
                    step(b[:, :-1], b[:, 1:])
            ms = dict.fromkeys(cats, 0.0)
            flops = 0.0
            for ev in prof.key_averages():
                ms[_category(ev.key)] += ev.self_cpu_time_total / 1e3 / args.steps  # us -> ms per step
                flops += (ev.flops or 0) / args.steps if _category(ev.key) == "gemm" else 0.0
            totals[name] = sum(ms.values())
            totals[name + "_core"] = ms["gemm"] + ms["attention"]
            print(
                f"| {size} | {name} | {totals[name + '_plain']:.1f} | {totals[name]:.1f} | "
                + " | ".join(f"{ms[c]:.1f}" for c in cats)
                + f" | {flops / 1e9:.2f} | {flops / ms['gemm'] / 1e6:.0f} |",
                flush=True,
            )
        print(
            f"| {size} | peer / ours | {totals['peer_plain'] / totals['ours_plain']:.2f}x | "
            f"{totals['peer'] / totals['ours']:.2f}x | bound, ours' non-GEMM non-attention time at zero: "
            f"{totals['peer_plain'] / totals['ours_core']:.2f}x |",
            flush=True,
        )


def shakespeare(args: argparse.Namespace) -> None:
    if not SHAKESPEARE.is_file():
        print(f"skipped: {SHAKESPEARE} not found (../shared is absent)")
        return
    from nanoforge.trainer.config import load_config
    from nanoforge.trainer.prepare import byte_tokenizer, write_arrays
    from nanoforge.trainer.pretrain import run

    raw = SHAKESPEARE.read_bytes()
    ids = np.frombuffer(raw, dtype=np.uint8).astype(np.uint16)
    n = int(len(ids) * 0.9)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_arrays(
            data,
            {"train": ids[:n], "val": ids[n:]},
            byte_tokenizer(),
            {"train": n, "val": len(ids) - n},
            [str(SHAKESPEARE)],
        )
        overrides = [
            f"data.dir={data}",
            "log.tensorboard=false",
            f"train.threads={args.threads}",
            "train.device=cpu",
        ]
        overrides += ["log.progress=false"] if not sys.stderr.isatty() else []
        cfg = load_config("shakespeare-char", overrides + args.overrides)
        evals: list[dict] = []
        t0 = time.perf_counter()
        summary = run(
            cfg, Path(tmp) / "run", on_log=lambda r: evals.append(r) if r["kind"] == "eval" else None
        )
        wall = time.perf_counter() - t0
    print(
        f"shakespeare-char (byte-level, nanoGPT split), torch {torch.__version__}, {args.threads} thread(s)"
    )
    print("| step | train loss | val loss | val bpb |")
    print("|---:|---:|---:|---:|")
    for r in evals:
        print(f"| {r['step']} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} |")
    print(
        f"val loss at step {summary['step']}: {summary['eval']['val_loss']:.4f} (nanoGPT: 1.88); "
        f"wall {wall:.0f} s total, training {summary['wall_s']:.0f} s, {summary['tokens_per_s']:,.0f} tok/s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shakespeare", action="store_true", help="run the nanoGPT Shakespeare-char reference instead"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the machine is shared: default 1)"
    )
    p.add_argument("--sizes", default="shakespeare,small", help=f"comma-separated; from {', '.join(SIZES)}")
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast, both models"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument(
        "--breakdown", action="store_true", help="profile both models' steps by category instead of timing"
    )
    p.add_argument("--clock", default="wall", choices=list(CLOCKS), help="wall or process CPU seconds")
    p.add_argument(
        "overrides", nargs="*", help="config overrides for --shakespeare, e.g. train.max_iters=200"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    mode = shakespeare if args.shakespeare else breakdown if args.breakdown else speed
    mode(args)


if __name__ == "__main__":
    main()
