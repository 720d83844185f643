"""Kernelized (linear) causal attention: ``softmax(q k^T)`` replaced by ``phi(q) phi(k)^T``.

What it does: ``KernelMixer`` computes, for each query n,

    out_n = phi(q_n) S_n / (phi(q_n) . z_n + eps),   S_n = sum_{m<=n} phi(k_m)^T v_m,   z_n = sum_{m<=n} phi(k_m)

in two equivalent forms: *parallel* (a causally masked (T, T) matrix, used for prompts/training) and
*recurrent* (a running state ``S`` (B, nh, F, hd) and ``z`` (B, nh, F), O(1) memory per token, used for
decoding). The feature map ``phi`` is pluggable: ``elu(x)+1`` (Katharopoulos et al. 2020) or ``relu`` here,
FAVOR+ random features in ``performer``. Pads get ``phi(k) = 0`` so they add nothing to the state.
What it does not do: the O(T) chunked-prefix-sum training kernel (the parallel form here is O(T^2) in
time but exact and simple), or any softmax approximation guarantee for elu/relu maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from nanoforge.core_model.attention.base import Step, expand_kv, merge_heads
from nanoforge.core_model.config import ModelConfig

EPS = 1e-6


class EluFeatures(nn.Module):
    """``phi(x) = elu(x) + 1`` (positive, F = head_dim)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.n_features = head_dim

    def forward(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        return F.elu(x) + 1.0


class ReluFeatures(nn.Module):
    """``phi(x) = relu(x)`` (non-negative, F = head_dim)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.n_features = head_dim

    def forward(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        return F.relu(x)


FEATURE_MAPS: dict[str, Callable[[int], nn.Module]] = {"elu": EluFeatures, "relu": ReluFeatures}


def linear_attention_parallel(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    S: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    """Parallel form over a chunk; ``S``/``z`` carry the prefix before it (None = empty).

    Args:
        fq, fk: (B, nh, T, F) query / key features; v: (B, nh, T, hd).
    Returns:
        (B, nh, T, hd).
    """
    T = fq.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=fq.device).tril()
    A = (fq @ fk.transpose(-2, -1)).masked_fill(~causal, 0.0)  # (B, nh, T, T)
    num = A @ v  # (B, nh, T, hd)
    den = A.sum(-1)  # (B, nh, T)
    if S is not None and z is not None:
        num = num + fq @ S
        den = den + (fq * z[:, :, None, :]).sum(-1)
    return num / (den[..., None] + EPS)


def linear_attention_recurrent(
    fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, S: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """Recurrent form, one token at a time; updates ``S`` (B, nh, F, hd) and ``z`` (B, nh, F) in place."""
    outs = []
    for t in range(fq.shape[2]):
        q_t, k_t, v_t = fq[:, :, t], fk[:, :, t], v[:, :, t]  # (B, nh, F), (B, nh, F), (B, nh, hd)
        S += k_t[..., :, None] * v_t[..., None, :]  # outer product (B, nh, F, hd)
        z += k_t
        num = (q_t[..., None, :] @ S)[..., 0, :]  # (B, nh, hd)
        den = (q_t * z).sum(-1, keepdim=True)  # (B, nh, 1)
        outs.append(num / (den + EPS))
    return torch.stack(outs, dim=2)  # (B, nh, T, hd)


class KernelMixer(nn.Module):
    """Causal linear attention with feature map ``features``; decode state ``S``/``z``."""

    supports_decode = True

    def __init__(self, config: ModelConfig, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.n_head, self.head_dim = config.n_head, config.head_size

    def new_state(
        self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        f = cast(int, self.features.n_features)  # every feature map module defines n_features
        return {
            "S": torch.zeros(batch, self.n_head, f, self.head_dim, device=device, dtype=torch.float32),
            "z": torch.zeros(batch, self.n_head, f, device=device, dtype=torch.float32),
        }

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        step: Step,
        state: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        dtype = q.dtype
        k, v = expand_kv(k, self.n_head).float(), expand_kv(v, self.n_head).float()  # (B, nh, T, hd)
        fq = self.features(q.float(), is_query=True)  # (B, nh, T, F)
        fk = self.features(k, is_query=False)
        if step.token_mask is not None:
            fk = fk * step.token_mask[:, None, :, None]  # pads contribute nothing
        if state is None:
            y = linear_attention_parallel(fq, fk, v)
        elif q.shape[2] == 1:
            y = linear_attention_recurrent(fq, fk, v, state["S"], state["z"])
        else:
            y = linear_attention_parallel(fq, fk, v, state["S"], state["z"])
            state["S"] += fk.transpose(-2, -1) @ v  # (B, nh, F, hd)
            state["z"] += fk.sum(2)
        return merge_heads(y.to(dtype))


def build_linear(config: ModelConfig, layer: int) -> nn.Module:
    """Linear attention with the feature map named by ``attention_options['feature_map']`` (default elu)."""
    name = config.attention_options.get("feature_map", "elu")
    return KernelMixer(config, FEATURE_MAPS[name](config.head_size))
