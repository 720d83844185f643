"""Decode benchmark: nanoforge GPT vs transformers LlamaForCausalLM with the same random weights.

What it measures (fp32, CPU, torch.set_num_threads(--threads)): greedy generation with a KV cache of
``--new`` tokens after a ``--prompt``-token random prompt, at batch 1 and 8 — time to first token (prefill +
first sample) and decode tokens/s (``batch * (new - 1) / (total - ttft)``); transformers without a cache at
batch 1 for reference; the memory-bandwidth bound (bytes of weights read per decode step / bandwidth
measured with a large tensor copy). Reports the median of ``--repeats`` runs and ratios ours/transformers.
What it does not do: measure quality (both produce the same greedy tokens; the script checks it).

    .venv/bin/python tools/bench/decode.py --write docs/bench/decode.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.generate import generate
from nanoforge.core_model.model import GPT, build_model


def make_models(
    layers: int, width: int, heads: int, kv_heads: int, vocab: int
) -> tuple[LlamaForCausalLM, GPT]:
    """A random HF Llama and our GPT holding exactly the same weights."""
    torch.manual_seed(0)
    ours_cfg = ModelConfig(
        vocab_size=vocab,
        n_layer=layers,
        n_head=heads,
        n_kv_head=kv_heads,
        d_model=width,
        max_seq_len=2048,
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=1e-6,
        positions="rope",
        tie_embeddings=False,
    )
    hf_cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=ours_cfg.mlp_width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    hf = LlamaForCausalLM(hf_cfg).eval()
    ours = build_model(ours_cfg).eval()
    sd = {
        "tok_emb.weight": hf.model.embed_tokens.weight,
        "norm_f.weight": hf.model.norm.weight,
        "lm_head.weight": hf.lm_head.weight,
    }
    for i, layer in enumerate(hf.model.layers):
        sd[f"blocks.{i}.norm1.weight"] = layer.input_layernorm.weight
        sd[f"blocks.{i}.norm2.weight"] = layer.post_attention_layernorm.weight
        for n in ("q", "k", "v", "o"):
            sd[f"blocks.{i}.attn.{n}_proj.weight"] = getattr(layer.self_attn, f"{n}_proj").weight
        for n in ("gate", "up", "down"):
            sd[f"blocks.{i}.mlp.{n}_proj.weight"] = getattr(layer.mlp, f"{n}_proj").weight
    ours.load_state_dict({k: v.detach().clone() for k, v in sd.items()})
    return hf, ours


def hf_generate(
    hf: LlamaForCausalLM, prompts: torch.Tensor, new: int, use_cache: bool = True
) -> torch.Tensor:
    with torch.inference_mode():
        out = hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out[:, prompts.shape[1] :]


def ours_generate(model: GPT, prompts: torch.Tensor, new: int, use_cache: bool = True) -> torch.Tensor:
    out = generate(model, prompts.tolist(), max_new_tokens=new, temperature=0.0, use_cache=use_cache)
    return torch.tensor(out)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Seconds taken by ``fn()`` and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure_pair(
    fns: dict[str, Callable[[torch.Tensor, int], torch.Tensor]], prompts: torch.Tensor, new: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Per library: median TTFT (ms), total (s), decode tok/s over ``repeats`` runs after one warm-up.

    The libraries alternate run by run, so a burst of load from other jobs hits both alike.
    """
    times: dict[str, dict[str, list[float]]] = {k: {"ttft": [], "total": []} for k in fns}
    for fn in fns.values():
        fn(prompts, 2)  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name]["ttft"].append(timed(lambda f=fn: f(prompts, 1))[0])
            times[name]["total"].append(timed(lambda f=fn: f(prompts, new))[0])
    out = {}
    B = prompts.shape[0]
    for name, t in times.items():
        ttft, total = statistics.median(t["ttft"]), statistics.median(t["total"])
        best_ttft, best_total = min(t["ttft"]), min(t["total"])
        out[name] = {
            "ttft_ms": ttft * 1e3,
            "total_s": total,
            "decode_tok_s": B * (new - 1) / max(total - ttft, 1e-9),
            "best_decode_tok_s": B * (new - 1) / max(best_total - best_ttft, 1e-9),
        }
    return out


def memory_bandwidth_gbs(n_bytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """GB/s of a large tensor copy (read + write counted)."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--nocache-new", type=int, default=32, help="new tokens for the no-cache reference run")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", help="write the markdown report to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]

    hf, ours = make_models(args.layers, args.width, args.heads, args.kv_heads, args.vocab)
    g = torch.Generator().manual_seed(1)
    rows = []
    for B in args.batches:
        prompts = torch.randint(0, args.vocab, (B, args.prompt), generator=g)
        same = torch.equal(hf_generate(hf, prompts, 16), ours_generate(ours, prompts, 16))
        r = measure_pair(
            {"hf": lambda p, n: hf_generate(hf, p, n), "ours": lambda p, n: ours_generate(ours, p, n)},
            prompts,
            args.new,
            args.repeats,
        )
        rows.append((f"batch {B}, cache", r["hf"], r["ours"], same))
        print(rows[-1], flush=True)
    prompts = torch.randint(0, args.vocab, (1, args.prompt), generator=g)
    r = measure_pair(
        {
            "hf": lambda p, n: hf_generate(hf, p, n, use_cache=False),
            "ours": lambda p, n: ours_generate(ours, p, n, use_cache=False),
        },
        prompts,
        args.nocache_new,
        args.repeats,
    )
    rows.append(("batch 1, no cache", r["hf"], r["ours"], True))
    print(rows[-1], flush=True)

    bw = memory_bandwidth_gbs()
    n_params = sum(p.numel() for p in ours.parameters())
    read_per_step = (n_params - ours.tok_emb.weight.numel()) * 4  # every weight but the embedding table
    bound_ms = read_per_step / (bw * 1e9) * 1e3
    step_ms_b1 = 1e3 / rows[0][2]["decode_tok_s"] if args.batches[0] == 1 else float("nan")

    lines = [
        "# Decode benchmark: nanoforge GPT vs transformers LlamaForCausalLM",
        "",
        f"Command: `.venv/bin/python tools/bench/decode.py{' --write ' + args.write if args.write else ''}`",
        "",
        f"Model: {args.layers} layers, width {args.width}, GQA {args.heads}/{args.kv_heads} heads, vocab {args.vocab}, "
        f"SwiGLU {ours.config.mlp_width}, untied, fp32, {n_params / 1e6:.1f}M parameters; same random weights in both.",
        f"Workload: {args.prompt}-token random prompt, {args.new} new tokens greedy (no-cache rows: "
        f"{args.nocache_new} new tokens); torch {torch.__version__}, "
        f"transformers {__import__('transformers').__version__}, {args.threads} threads, {platform.processor() or platform.machine()}.",
        f"Median of {args.repeats} runs after a warm-up. Decode tok/s = batch * (new - 1) / (total - TTFT).",
        f"Machine load average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores: other jobs shared the CPUs when this exceeds ~{args.threads}, so absolute numbers "
        "are noisy; the two libraries alternate run by run in one process, so the ratios are the comparable part.",
        "",
        "| run | transformers TTFT ms | ours TTFT ms | transformers decode tok/s | ours decode tok/s | "
        "ratio ours/transformers (decode, median) | ratio (best run of each) | same greedy tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, h, o, same in rows:
        lines.append(
            f"| {name} | {h['ttft_ms']:.1f} | {o['ttft_ms']:.1f} | {h['decode_tok_s']:.1f} | {o['decode_tok_s']:.1f} "
            f"| {o['decode_tok_s'] / h['decode_tok_s']:.2f}x | {o['best_decode_tok_s'] / h['best_decode_tok_s']:.2f}x "
            f"| {'yes' if same else 'NO'} |"
        )
    lines += [
        "",
        f"Memory-bandwidth bound (batch 1): {read_per_step / 1e6:.0f} MB of weights read per step / "
        f"{bw:.1f} GB/s measured copy bandwidth = {bound_ms:.1f} ms/step "
        f"({1e3 / bound_ms:.0f} tok/s); ours measured {step_ms_b1:.1f} ms/step "
        f"= {bound_ms / step_ms_b1 * 100:.0f}% of the bound.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        with open(args.write, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
