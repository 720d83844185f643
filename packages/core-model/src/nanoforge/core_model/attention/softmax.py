"""Softmax attention (full causal and sliding-window) with a preallocated KV cache / ring buffer.

What it does: two kernels that compute the same thing — ``sdpa`` (``F.scaled_dot_product_attention``, the fast
path) and ``math`` (written out: scores, mask, softmax, weighted sum) — selected by
``attention_options["kernel"]``; ``SoftmaxMixer`` writes new keys/values into a preallocated cache in place
(slice assignment when all rows are aligned, per-row scatter otherwise) and ``SlidingMixer`` keeps the last
``sliding_window`` real keys of each row in a ring buffer.
What it does not do: projections or RoPE (``base.Attention``), or decide cache sizes (``state``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nanoforge.core_model.attention.base import Step, expand_kv, merge_heads
from nanoforge.core_model.config import ModelConfig

# A kernel: (q (B,nh,T,hd), k/v (B,nkv,S,hd), mask (B,1,T,S) bool | None, causal, dropout_p) -> (B,nh,T,hd)
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, bool, float], torch.Tensor]


def sdpa_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    dropout_p: float,
) -> torch.Tensor:
    """Fast path: PyTorch's fused scaled-dot-product attention, GQA without copying the cache."""
    B, nh, T, hd = q.shape
    nkv = k.shape[1]
    if T == 1 and mask is None and nh != nkv:
        # One new token: the rep = nh // nkv query heads sharing a kv head act as a length-rep query "sequence".
        y = F.scaled_dot_product_attention(q.reshape(B, nkv, nh // nkv, hd), k, v, dropout_p=dropout_p)
        return y.reshape(B, nh, 1, hd)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, dropout_p=dropout_p, enable_gqa=nh != nkv
    )


def math_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    dropout_p: float,
) -> torch.Tensor:
    """Explicit path: ``softmax(q k^T / sqrt(hd) + mask) v``, the textbook formula."""
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])  # (B, nh, S, hd)
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, T, S)
    if mask is None and causal:  # top-left aligned causal mask, like SDPA's is_causal
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v  # (B, nh, T, hd)


KERNELS: dict[str, Kernel] = {"sdpa": sdpa_kernel, "math": math_kernel}


def write_kv(cache: torch.Tensor, new: torch.Tensor, step: Step) -> None:
    """Write ``new`` (B, nkv, T, hd) into ``cache`` (B, nkv, L, hd) at the step's slots, in place."""
    if step.offset is not None:
        cache[:, :, step.offset : step.offset + new.shape[2]] = new
    else:
        assert step.slots is not None
        rows = torch.arange(new.shape[0], device=new.device)[:, None]  # (B, 1)
        cache[rows, :, step.slots] = new.transpose(1, 2).to(cache.dtype)  # indexed view is (B, T, nkv, hd)


class SoftmaxMixer(nn.Module):
    """Causal softmax attention over a preallocated KV cache (``k``/``v``: (B, nkv, max_len, hd))."""

    supports_decode = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kernel = KERNELS[config.attention_options.get("kernel", "sdpa")]
        self.dropout = config.dropout
        self.n_kv_head, self.head_dim = config.kv_heads, config.head_size

    def new_state(
        self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        shape = (batch, self.n_kv_head, max_len, self.head_dim)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
        }

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        step: Step,
        state: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        if state is not None:
            write_kv(state["k"], k, step)
            write_kv(state["v"], v, step)
            k, v = state["k"][:, :, : step.kv_len], state["v"][:, :, : step.kv_len]  # (B, nkv, S, hd)
        dropout = self.dropout if self.training else 0.0
        mask = step.softmax_mask() if step.needs_mask() else None
        y = self.kernel(q, k, v, mask, q.shape[2] > 1, dropout)
        return merge_heads(y)


class SlidingMixer(nn.Module):
    """Softmax attention restricted to the last ``sliding_window`` positions (Mistral-style).

    Decoding keeps a ring buffer of ``window`` slots per row (``k``/``v``: (B, nkv, W, hd), ``pos``: (B, W)
    position + 1 of each slot, 0 = empty, ``count``: (B,) real tokens written); all-zero is the empty state,
    so resetting a row is zero-filling it. Pads are never written, so an idle row
    in a batched step does not evict its keys. Memory is O(window), not O(sequence).
    """

    supports_decode = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.sliding_window is not None
        self.window = config.sliding_window
        self.kernel = KERNELS[config.attention_options.get("kernel", "sdpa")]
        self.dropout = config.dropout
        self.n_kv_head, self.head_dim = config.kv_heads, config.head_size

    def new_state(
        self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        shape = (batch, self.n_kv_head, self.window, self.head_dim)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "pos": torch.zeros((batch, self.window), device=device, dtype=torch.long),
            "count": torch.zeros(batch, device=device, dtype=torch.long),
        }

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        step: Step,
        state: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        dropout = self.dropout if self.training else 0.0
        if state is None:
            mask = step.softmax_mask(self.window)
            return merge_heads(self.kernel(q, k, v, mask, True, dropout))
        T = step.positions.shape[1]
        real = (
            step.token_mask
            if step.token_mask is not None
            else torch.ones_like(step.positions, dtype=torch.bool)
        )
        # Keys: the ring (older tokens) followed by this step's tokens.
        keys = torch.cat([state["k"], k], dim=2)  # (B, nkv, W + T, hd)
        values = torch.cat([state["v"], v], dim=2)
        kpos = torch.cat([state["pos"] - 1, step.positions], dim=1)  # (B, W + T)
        kvalid = torch.cat([state["pos"] > 0, real], dim=1)
        qpos = step.positions[:, :, None]  # (B, T, 1)
        ring_ok = kvalid[:, None, : self.window] & ((qpos - kpos[:, None, : self.window]) < self.window)
        t = torch.arange(T, device=q.device)
        new_ok = (t[None, :] <= t[:, None])[None] & (
            kvalid[:, None, self.window :] | (t[None, :] == t[:, None])[None]
        )
        new_ok = new_ok & ((qpos - kpos[:, None, self.window :]) < self.window)
        mask = torch.cat([ring_ok, new_ok], dim=2)[:, None]  # (B, 1, T, W + T)
        y = self.kernel(q, keys, values, mask, False, dropout)
        self._write_ring(state, k, v, step.positions, real)
        return merge_heads(y)

    def _write_ring(
        self,
        state: dict[str, torch.Tensor],
        k: torch.Tensor,
        v: torch.Tensor,
        pos: torch.Tensor,
        real: torch.Tensor,
    ) -> None:
        """Append the last ``window`` real tokens of each row at ring slots ``count % window``."""
        rank = real.long().cumsum(1) - 1  # (B, T) index of each real token within the row's chunk
        n_real = real.long().sum(1, keepdim=True)  # (B, 1)
        keep = real & (rank >= n_real - self.window)  # older ones would be overwritten in this same step
        rows, cols = keep.nonzero(as_tuple=True)
        slots = (state["count"][rows] + rank[rows, cols]) % self.window
        state["k"][rows, :, slots] = k[rows, :, cols].to(state["k"].dtype)  # (autocast may give bf16 k/v)
        state["v"][rows, :, slots] = v[rows, :, cols].to(state["v"].dtype)
        state["pos"][rows, slots] = pos[rows, cols] + 1
        state["count"] += n_real[:, 0]


def build_softmax(config: ModelConfig, layer: int) -> nn.Module:
    """Full causal softmax attention."""
    return SoftmaxMixer(config)


def build_sliding(config: ModelConfig, layer: int) -> nn.Module:
    """Sliding-window softmax attention with a ring-buffer decode state."""
    return SlidingMixer(config)
