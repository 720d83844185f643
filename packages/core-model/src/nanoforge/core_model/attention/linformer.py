"""Linformer attention made causal: softmax over k *projected* keys/values instead of the T real ones.

What it does: published Linformer (Wang et al. 2020) projects the whole sequence's keys and values with a
learned E (k, n): ``K' = E K``, ``V' = E V``, and attends ``softmax(q K'^T) V'``. That mixes future tokens
into every position, so it is NOT causal as published. Here each query n uses the projection of its own
prefix only (a cumulative projection):

    K'_n[j] = sum_{m<=n} E[j, pos_m] k_m,   V'_n[j] = sum_{m<=n} E[j, pos_m] v_m,
    out_n   = softmax_j(q_n . K'_n[j] / sqrt(hd)) V'_n

which is causal and decodable with a constant-size state (``K``/``V``: (B, nh, k, hd)). The parallel form
expands the sums so nothing of size (T, k, hd) is materialised: scores = ((q k^T) * causal) @ E_T and
out = ((p @ E_T^T) * causal) @ v — O(T^2) time like softmax attention (the linear-time benefit of
Linformer survives only in decoding, O(k) per token). Positions index E, so they must stay below
``max_seq_len`` (checked by the model).
What it does not do: the bidirectional (encoder) Linformer, or share E across heads/layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanoforge.core_model.attention.base import Step, expand_kv, merge_heads
from nanoforge.core_model.config import ModelConfig


class LinformerMixer(nn.Module):
    """Causal cumulative-projection Linformer; ``E`` (k, max_seq_len) is a learned parameter."""

    supports_decode = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.k = config.attention_options.get("linformer_k", 32)
        self.n_head, self.head_dim = config.n_head, config.head_size
        self.E = nn.Parameter(torch.randn(self.k, config.max_seq_len) / math.sqrt(self.k))

    def new_state(
        self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        shape = (batch, self.n_head, self.k, self.head_dim)
        return {
            "K": torch.zeros(shape, device=device, dtype=dtype),
            "V": torch.zeros(shape, device=device, dtype=dtype),
        }

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        step: Step,
        state: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        k, v = expand_kv(k, self.n_head), expand_kv(v, self.n_head)  # (B, nh, T, hd)
        T = q.shape[2]
        Et = self.E.T[step.positions].to(q.dtype)  # (B, T, k): column of E for each token's position
        if step.token_mask is not None:
            Et = Et * step.token_mask[..., None]  # pads are projected to nothing
        Et = Et[:, None]  # (B, 1, T, k)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scale = 1.0 / math.sqrt(self.head_dim)
        qk = (q @ k.transpose(-2, -1)).masked_fill(~causal, 0.0)  # (B, nh, T, T)
        scores = (qk @ Et) * scale  # (B, nh, T, k)
        if state is not None:
            scores = scores + (q @ state["K"].transpose(-2, -1)) * scale
        p = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, nh, T, k)
        y = (p @ Et.transpose(-2, -1)).masked_fill(~causal, 0.0) @ v  # (B, nh, T, hd)
        if state is not None:
            y = y + p @ state["V"]
            state["K"] += Et.transpose(-2, -1) @ k  # (B, nh, k, hd)
            state["V"] += Et.transpose(-2, -1) @ v
        return merge_heads(y)


def build_linformer(config: ModelConfig, layer: int) -> nn.Module:
    """Causal Linformer with ``linformer_k`` projected slots (default 32)."""
    return LinformerMixer(config)
