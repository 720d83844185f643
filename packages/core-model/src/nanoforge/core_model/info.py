"""Back-of-the-envelope numbers for a model: parameter breakdown, FLOPs per token, memory.

What it does (used by ``nanoforge model info``):
    * ``count_parameters`` — exact counts per group (embedding / attention / mlp / norms / head), from a
      model or a config (the config is built on the ``meta`` device: no memory, no init cost);
    * ``flops_per_token`` — Kaplan-style estimates. ``N`` = parameters used in matmuls (everything but the
      embedding tables, plus the LM head once even when tied). Forward = 2N + attention term; training
      (forward + backward) = 3 x forward = 6N + 3 x attention; decode of one token at context L = 2N +
      attention at context L. The attention term of a softmax layer is 4 * n_head * head_dim * context
      (q.k scores and the weighted sum of v, 2 FLOPs per multiply-add), with context = (T+1)/2 on average
      under a causal mask, min(., window) for sliding layers; recurrent variants cost a constant
      4 * n_head * head_dim * state_width per token;
    * ``memory_estimate`` — weights, decode state (KV cache / ring buffer / recurrent state) at a
      batch and length, and a rough training-activation figure (Korthikanti et al. 2022 per-layer
      formula, without recomputation or flash attention).
What it does not do: measure anything (see tools/bench) or count optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import GPT

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _as_model(model_or_config: GPT | ModelConfig) -> GPT:
    if isinstance(model_or_config, GPT):
        return model_or_config
    if isinstance(model_or_config, ModelConfig):
        with torch.device("meta"):
            return GPT(model_or_config)
    raise ValueError(f"expected a GPT or a ModelConfig, got {type(model_or_config).__name__}")


def count_parameters(model_or_config: GPT | ModelConfig) -> dict[str, int]:
    """Parameter counts: embedding, attention, mlp, norms, head (0 when tied) and total (distinct)."""
    model = _as_model(model_or_config)
    out = {"embedding": 0, "attention": 0, "mlp": 0, "norms": 0, "head": 0}
    seen: set[int] = set()
    for name, p in model.named_parameters():  # tied weights appear once
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.startswith(("tok_emb", "pos_emb")):
            out["embedding"] += p.numel()
        elif name.startswith("lm_head"):
            out["head"] += p.numel()
        elif ".attn." in name:
            out["attention"] += p.numel()
        elif ".mlp." in name:
            out["mlp"] += p.numel()
        else:
            out["norms"] += p.numel()
    out["total"] = sum(out.values())
    return out


def _state_width(config: ModelConfig, kind: str) -> int:
    """Number of "slots" a recurrent layer keeps per head (its per-token cost is 4 * nh * hd * width)."""
    opts = config.attention_options
    widths = {
        "linear": config.head_size,
        "performer": opts.get("performer_features", 2 * config.head_size),
        "retnet": config.head_size,
        "linformer": opts.get("linformer_k", 32),
    }
    return widths[kind]


def _window(config: ModelConfig) -> int:
    assert config.sliding_window is not None
    return config.sliding_window


# Forward attention FLOPs of one token of one layer attending over `ctx` earlier tokens, per kind.
ATTENTION_FLOPS: dict[str, Callable[[ModelConfig, float], float]] = {
    "softmax": lambda c, ctx: 4 * c.n_head * c.head_size * ctx,
    "sliding": lambda c, ctx: 4 * c.n_head * c.head_size * min(ctx, _window(c)),
    "linear": lambda c, ctx: 4 * c.n_head * c.head_size * _state_width(c, "linear"),
    "performer": lambda c, ctx: 4 * c.n_head * c.head_size * _state_width(c, "performer"),
    "linformer": lambda c, ctx: 4 * c.n_head * c.head_size * _state_width(c, "linformer"),
    "retnet": lambda c, ctx: 4 * c.n_head * c.head_size * _state_width(c, "retnet"),
}

# Decode-state bytes of one layer for (config, batch, seq_len, bytes per element), per kind; mirrors each
# mixer's new_state (recurrent states are fp32).
STATE_BYTES: dict[str, Callable[[ModelConfig, int, int, int], int]] = {
    "softmax": lambda c, b, t, n: 2 * b * c.kv_heads * t * c.head_size * n,
    "sliding": lambda c, b, t, n: (
        2 * b * c.kv_heads * _window(c) * c.head_size * n + b * _window(c) * 8 + b * 8
    ),
    "linear": lambda c, b, t, n: b * c.n_head * _state_width(c, "linear") * (c.head_size + 1) * 4,
    "performer": lambda c, b, t, n: b * c.n_head * _state_width(c, "performer") * (c.head_size + 1) * 4,
    "linformer": lambda c, b, t, n: 2 * b * c.n_head * _state_width(c, "linformer") * c.head_size * n,
    "retnet": lambda c, b, t, n: b * c.n_head * c.head_size * c.head_size * 4,
}


def _attention_flops(config: ModelConfig, context: float) -> float:
    """Forward attention FLOPs of one token attending over ``context`` earlier tokens (all layers)."""
    return sum(ATTENTION_FLOPS[config.layer_attention(i)](config, context) for i in range(config.n_layer))


def flops_per_token(config: ModelConfig, seq_len: int) -> dict[str, float]:
    """FLOPs per token for sequences of ``seq_len`` tokens.

    Returns:
        ``matmul_params`` (N), ``forward`` (2N + attention, averaged over a causal sequence), ``training``
        (6N + 3 x attention: forward + backward), ``decode`` (2N + attention of the token at position
        ``seq_len``, with a cache) and ``attention_forward`` (the attention term alone).
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len} must be a positive int")
    counts = count_parameters(config)
    n = (
        counts["total"]
        - counts["embedding"]
        + (config.d_model * config.vocab_size if config.tie_embeddings else 0)
    )
    attn_avg = _attention_flops(config, (seq_len + 1) / 2)
    return {
        "matmul_params": float(n),
        "attention_forward": attn_avg,
        "forward": 2 * n + attn_avg,
        "training": 6 * n + 3 * attn_avg,
        "decode": 2 * n + _attention_flops(config, seq_len),
    }


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; accepted: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def memory_estimate(
    config: ModelConfig, batch: int, seq_len: int, dtype: torch.dtype | str = torch.float32
) -> dict[str, Any]:
    """Bytes for weights, decode state at (batch, seq_len) and rough training activations.

    Recurrent states are kept in fp32 whatever ``dtype`` is (as the model does).
    """
    if batch <= 0 or seq_len <= 0:
        raise ValueError(f"batch={batch} and seq_len={seq_len} must be positive ints")
    dt = _dtype(dtype)
    nbytes = torch.tensor([], dtype=dt).element_size()
    counts = count_parameters(config)
    state = sum(
        STATE_BYTES[config.layer_attention(i)](config, batch, seq_len, nbytes) for i in range(config.n_layer)
    )
    s, b, h, a = seq_len, batch, config.d_model, config.n_head
    per_layer_16bit = s * b * h * (34 + 5 * a * s / h)  # Korthikanti et al. (2022), bytes at 16-bit
    activations = (
        config.n_layer * per_layer_16bit * nbytes / 2 + b * s * config.vocab_size * 4
    )  # + fp32 logits
    return {
        "dtype": str(dt).replace("torch.", ""),
        "weights_bytes": counts["total"] * nbytes,
        "decode_state_bytes": state,
        "training_activations_bytes_rough": int(activations),
    }
