"""Weight-only quantized linear layers: int8 per output channel and 4-bit group-wise (two nibbles per byte).

What it does: ``Int8Linear`` stores an int8 weight (out, in) and one fp32 scale per output row
(symmetric, ``scale = max|w_row| / 127``); its forward is ``(x @ q^T) * scale + bias``, which is exact
algebra because the scale is per output channel. ``Int4Linear`` splits every row into groups of
``group_size`` input columns, stores per group an fp32 scale and an integer zero point (asymmetric,
``q = round(w / scale) + zero`` in [0, 15]), packs two 4-bit codes per uint8 (low nibble = even column)
and dequantizes the whole weight on the fly in each forward, then runs a normal matmul. Both are built from
an ``nn.Linear`` with ``from_linear`` and keep ``in_features`` / ``out_features`` so wrappers (LoRA) work.
What it does not do: activation quantization, fused int kernels (on CPU the dequantize costs time; the
win is memory), or choosing which modules to quantize (``apply``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """Linear layer with an int8 weight and a per-output-channel fp32 scale."""

    qweight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)  # (out, in) int8
        self.register_buffer("scale", scale)  # (out,) fp32
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize ``linear``'s weight symmetrically per output row."""
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # (out,)
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(q, scale, bias)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight this layer computes with, (out, in)."""
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(out, n) codes in [0, 15] with n even -> (out, n/2) uint8; column 2j is the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: (out, n/2) uint8 -> (out, n) uint8 codes."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)  # (out, n/2, 2) -> (out, n)


class Int4Linear(nn.Module):
    """Linear layer with a 4-bit group-wise asymmetric weight, dequantized on the fly."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        packed: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
        group_size: int,
    ) -> None:
        super().__init__()
        self.out_features = packed.shape[0]
        self.in_features = in_features
        self.group_size = group_size
        self.register_buffer("packed", packed)  # (out, in_padded / 2) uint8
        self.register_buffer("scale", scale)  # (out, groups) fp32
        self.register_buffer("zero", zero)  # (out, groups) uint8 in [0, 15]
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 64) -> Int4Linear:
        """Quantize ``linear``'s weight in groups of ``group_size`` input columns (zero-padded at the end;
        a layer narrower than ``group_size`` uses one group per row).

        Raises:
            ValueError: ``group_size`` is not a positive even number.
        """
        if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
            raise ValueError(f"group_size={group_size!r} must be a positive even int (e.g. 32, 64, 128)")
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        group_size = min(group_size, in_f + in_f % 2)  # a row narrower than a group is one (even) group
        pad = (-in_f) % group_size
        if pad:
            w = F.pad(w, (0, pad))
        groups = w.shape[1] // group_size
        wg = w.view(out_f, groups, group_size)  # (out, G, g)
        lo = wg.amin(dim=2).clamp(max=0.0)  # keep 0 representable so zero padding stays exact
        hi = wg.amax(dim=2).clamp(min=0.0)
        scale = ((hi - lo) / 15.0).clamp_min(1e-12)  # (out, G)
        zero = torch.round(-lo / scale).clamp_(0, 15)  # (out, G)
        q = torch.round(wg / scale[..., None] + zero[..., None]).clamp_(0, 15)  # (out, G, g)
        packed = pack_nibbles(q.view(out_f, groups * group_size))
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(packed, scale, zero.to(torch.uint8), bias, in_f, group_size)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight this layer computes with, (out, in)."""
        out_f, groups = self.scale.shape
        q = unpack_nibbles(self.packed).view(out_f, groups, self.group_size).float()  # (out, G, g)
        w = (q - self.zero[..., None].float()) * self.scale[..., None]
        return w.view(out_f, groups * self.group_size)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"int4 group_size={self.group_size}"
        )


__all__ = ["Int4Linear", "Int8Linear", "pack_nibbles", "unpack_nibbles"]
