"""Small building blocks of the GPT: norms, MLPs, position encodings and RoPE with its scaling rules.

What it does: defines LayerNorm / RMSNorm, GELU / ReLU / SwiGLU MLPs, learned / sinusoidal / rotary positions
and the RoPE frequency rules (default, linear interpolation, dynamic NTK, YaRN, Llama-3), each reachable
through a registry dict of builder functions (``NORMS``, ``MLPS``, ``POSITIONS``, ``ROPE_INV_FREQ``).
What it does not do: attention (see ``attention/``) or assemble blocks (see ``model``).

RoPE follows HF Llama's "rotate_half" (non-interleaved) layout: the head is split into two halves
``[x1, x2]`` and rotated as ``[x1*cos - x2*sin, x2*cos + x1*sin]``, so HF q/k weights load unpermuted.
The scaling formulas reproduce ``transformers.modeling_rope_utils`` for ``rope_type`` linear, dynamic
(our "ntk"), yarn and llama3. "ntk" is HF's *dynamic* NTK: while the longest position in the batch is
below ``max_seq_len`` nothing changes, beyond it the base grows as
``theta * (factor * L / max_seq_len - (factor - 1)) ** (d / (d - 2))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanoforge.core_model.config import ModelConfig

# ------------------------------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean subtraction, no bias), computed in fp32 like HF Llama."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * rsqrt(mean(x^2) + eps) in fp32 (fused kernel), then scaled in the input dtype like HF Llama.
        h = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * h.to(x.dtype)


def build_layernorm(dim: int, eps: float, bias: bool) -> nn.Module:
    """LayerNorm with an optional bias (GPT-2 has one)."""
    return nn.LayerNorm(dim, eps=eps, bias=bias)


def build_rmsnorm(dim: int, eps: float, bias: bool) -> nn.Module:
    """RMSNorm; ``bias`` is ignored (RMSNorm has none)."""
    return RMSNorm(dim, eps=eps)


NORMS: dict[str, Callable[[int, float, bool], nn.Module]] = {
    "layernorm": build_layernorm,
    "rmsnorm": build_rmsnorm,
}


def build_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    """The config's norm over ``dim`` features (default ``d_model``)."""
    return NORMS[config.norm](dim or config.d_model, config.norm_eps, config.norm_bias)


# -------------------------------------------------------------------------------------------------- MLPs


class MLP(nn.Module):
    """Two-layer MLP: ``down_proj(act(up_proj(x)))``."""

    def __init__(self, d_model: int, d_hidden: int, act: Callable[[torch.Tensor], torch.Tensor], bias: bool):
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_hidden, bias=bias)
        self.down_proj = nn.Linear(d_hidden, d_model, bias=bias)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class SwiGLU(nn.Module):
    """Gated MLP of Llama: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, d_model: int, d_hidden: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_hidden, bias=bias)
        self.up_proj = nn.Linear(d_model, d_hidden, bias=bias)
        self.down_proj = nn.Linear(d_hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


MLPS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "gelu": lambda c: MLP(c.d_model, c.mlp_width, F.gelu, c.mlp_bias),
    "gelu_tanh": lambda c: MLP(c.d_model, c.mlp_width, _gelu_tanh, c.mlp_bias),
    "relu": lambda c: MLP(c.d_model, c.mlp_width, F.relu, c.mlp_bias),
    "swiglu": lambda c: SwiGLU(c.d_model, c.mlp_width, c.mlp_bias),
}

# ------------------------------------------------------------------------------------- RoPE frequencies
# Each rule: (head_dim, theta, scaling dict, max_seq_len, current length) -> (inv_freq (hd/2,), attn factor)


def _default_inv_freq(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def rope_default(
    dim: int, theta: float, rs: dict[str, Any], max_len: int, cur_len: int
) -> tuple[torch.Tensor, float]:
    """Plain RoPE: ``theta ** (-2i/d)``."""
    return _default_inv_freq(dim, theta), 1.0


def rope_linear(
    dim: int, theta: float, rs: dict[str, Any], max_len: int, cur_len: int
) -> tuple[torch.Tensor, float]:
    """Position interpolation: every frequency divided by ``factor`` (positions squeezed into the trained range)."""
    return _default_inv_freq(dim, theta) / rs["factor"], 1.0


def rope_dynamic_ntk(
    dim: int, theta: float, rs: dict[str, Any], max_len: int, cur_len: int
) -> tuple[torch.Tensor, float]:
    """HF "dynamic" NTK-aware scaling: the base grows once the current length exceeds ``max_seq_len``."""
    if cur_len <= max_len:  # HF resets to the original frequencies inside the trained range
        return _default_inv_freq(dim, theta), 1.0
    factor = rs["factor"]
    base = theta * ((factor * cur_len / max_len) - (factor - 1)) ** (dim / (dim - 2))
    return _default_inv_freq(dim, base), 1.0


def rope_yarn(
    dim: int, theta: float, rs: dict[str, Any], max_len: int, cur_len: int
) -> tuple[torch.Tensor, float]:
    """YaRN: interpolate low frequencies, keep high ones, linear ramp between; scale cos/sin by mscale."""
    factor = rs["factor"]
    orig = rs.get("original_max_position_embeddings", max_len)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = rs.get("attention_factor")
    if attn is None:
        m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if (m and m_all) else mscale(factor)
    beta_fast = rs.get("beta_fast") or 32
    beta_slow = rs.get("beta_slow") or 1

    def correction_dim(n_rot: float) -> float:  # dimension whose wavelength makes n_rot turns over `orig`
        return (dim * math.log(orig / (n_rot * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1 = keep the original (extrapolated) frequency
    return interpolation * (1 - keep) + extrapolation * keep, float(attn)


def rope_llama3(
    dim: int, theta: float, rs: dict[str, Any], max_len: int, cur_len: int
) -> tuple[torch.Tensor, float]:
    """Llama-3.1: long wavelengths divided by ``factor``, short ones kept, smooth blend in between."""
    inv_freq = _default_inv_freq(dim, theta)
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_len = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / lo, old_len / hi
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled), 1.0


ROPE_INV_FREQ: dict[str, Callable[..., tuple[torch.Tensor, float]]] = {
    "default": rope_default,
    "linear": rope_linear,
    "ntk": rope_dynamic_ntk,
    "dynamic": rope_dynamic_ntk,
    "yarn": rope_yarn,
    "llama3": rope_llama3,
}


class RotaryEmbedding(nn.Module):
    """Computes RoPE ``cos``/``sin`` tables for per-row positions; shared by every layer of a model."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dim = config.head_size
        self.theta = config.rope_theta
        self.max_len = config.max_seq_len
        self.scaling = dict(config.rope_scaling or {})
        self.kind = self.scaling.get("type", self.scaling.get("rope_type", "default"))
        self.rule = ROPE_INV_FREQ[self.kind]
        self.dynamic = self.kind in ("ntk", "dynamic")
        inv_freq, attn = self.rule(self.dim, self.theta, self.scaling, self.max_len, self.max_len)
        self.attention_factor = attn
        # A plain fp32 attribute, not a buffer: model.to(bfloat16) must not round the frequencies.
        self.inv_freq = inv_freq

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``cos, sin`` of shape (B, T, head_dim) in fp32 for integer ``positions`` (B, T)."""
        inv_freq = self.inv_freq.to(positions.device)
        if self.dynamic:
            cur = int(positions.max().item()) + 1
            if cur > self.max_len:
                inv_freq = self.rule(self.dim, self.theta, self.scaling, self.max_len, cur)[0].to(
                    positions.device
                )
        freqs = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, h, T, hd) by ``cos``/``sin`` (B, T, hd) or (B, 1, T, hd); math in x's dtype like HF."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd)
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


# -------------------------------------------------------------------------------- additive positions


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos encodings of "Attention is all you need", computed on the fly (any length)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.inv_freq = torch.exp(
            torch.arange(0, d, 2).float() * (-math.log(10000.0) / d)
        )  # fp32, not a buffer
        self.d_model = d

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        angles = positions.float()[..., None] * self.inv_freq.to(positions.device)  # (B, T, ceil(C/2))
        out = torch.zeros(*positions.shape, self.d_model, device=positions.device)
        out[..., 0::2] = angles.sin()
        out[..., 1::2] = angles.cos()[..., : self.d_model // 2]
        return out


# A position builder returns (additive encoder or None, rotary embedding or None).
PositionParts = tuple[nn.Module | None, RotaryEmbedding | None]
POSITIONS: dict[str, Callable[[ModelConfig], PositionParts]] = {
    "learned": lambda c: (nn.Embedding(c.max_seq_len, c.d_model), None),
    "sinusoidal": lambda c: (SinusoidalPositions(c), None),
    "rope": lambda c: (None, RotaryEmbedding(c)),
    "none": lambda c: (None, None),
}
