"""Performer attention (FAVOR+): linear attention whose features approximate the softmax kernel.

What it does: positive orthogonal random features (Choromanski et al. 2021)

    phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m),   x' = x / head_dim**0.25,

with W (m, head_dim) a fixed, seeded stack of orthogonal blocks whose rows have chi-distributed norms, so
``E[phi(q) . phi(k)] = exp(q . k / sqrt(head_dim))``. The projection is a persistent buffer (saved in the
checkpoint, never trained). Queries are stabilised by subtracting their per-token max exponent (it cancels
between numerator and denominator); keys are not (a per-key shift would not cancel).
What it does not do: redraw features during training, or the bidirectional (non-causal) variant. The
causal parallel/recurrent machinery is ``linear.KernelMixer``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanoforge.core_model.attention.linear import KernelMixer
from nanoforge.core_model.config import ModelConfig


def orthogonal_gaussian(m: int, d: int, seed: int) -> torch.Tensor:
    """(m, d) random matrix: orthogonal d x d blocks, rows rescaled to Gaussian-vector norms."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(m / d)):
        q, r = torch.linalg.qr(torch.randn(d, d, generator=g))
        q = q * torch.sign(torch.diagonal(r))  # sign fix: makes Q Haar-uniform (plain QR is biased)
        blocks.append(q.T)  # rows orthonormal
    w = torch.cat(blocks, dim=0)[:m]  # (m, d)
    norms = torch.randn(m, d, generator=g).norm(dim=1, keepdim=True)  # chi(d) lengths
    return w * norms


class FavorFeatures(nn.Module):
    """FAVOR+ positive random features with a fixed seeded projection."""

    projection: torch.Tensor  # (m, head_dim) buffer, registered in __init__

    def __init__(self, head_dim: int, n_features: int, seed: int) -> None:
        super().__init__()
        self.n_features = n_features
        self.scale = head_dim**-0.25
        self.register_buffer("projection", orthogonal_gaussian(n_features, head_dim, seed))

    def forward(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        x = x * self.scale
        logits = x @ self.projection.to(x.dtype).T - 0.5 * (x * x).sum(-1, keepdim=True)  # (B, nh, T, m)
        if is_query:
            logits = logits - logits.amax(-1, keepdim=True).detach()
        return torch.exp(logits) / math.sqrt(self.n_features)


def build_performer(config: ModelConfig, layer: int) -> nn.Module:
    """Performer layer; ``performer_features`` (default 2*head_dim) and ``performer_seed`` (default 0)."""
    opts = config.attention_options
    m = opts.get("performer_features", 2 * config.head_size)
    seed = opts.get("performer_seed", 0) + layer  # a different fixed draw per layer
    return KernelMixer(config, FavorFeatures(config.head_size, m, seed))
