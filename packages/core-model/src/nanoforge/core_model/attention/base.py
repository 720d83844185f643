"""The one attention interface: q/k/v/o projections around a swappable "mixer" (softmax, linear, RetNet...).

What it does: ``Attention`` owns the HF-named projections (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``),
optional QK-norm and RoPE, and delegates the token mixing to ``self.mixer``, a module chosen per layer from a
registry. ``Step`` carries what every layer of one forward call shares (positions, padding, cache slots, the
softmax mask, built once). Every mixer implements::

    forward(q, k, v, step, state) -> (B, T, n_head * head_dim)   # q (B, nh, T, hd), k/v (B, nkv, T, hd)
    new_state(batch, max_len, device, dtype) -> dict[str, Tensor]  # batch-first tensors, zero = empty
    supports_decode: bool

so ONE generation loop drives every variant. What it does not do: decide which rows live in a batch
(``state.ModelState`` does) or sample tokens (``generate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, cast

import torch
from torch import nn

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.layers import RMSNorm, apply_rope


@dataclass
class Step:
    """What all layers of one forward call share. Built by ``GPT.forward``; read-only for mixers.

    Attributes:
        positions: (B, T) position id of every new token (left pads get 0).
        token_mask: (B, T) bool, True for real tokens; None when every token is real.
        cos, sin: (B, 1, T, hd) RoPE tables or None when the model has no rotary positions.
        slots: (B, T) cache slot of every new token (== arange(T) + row length); None without a state.
        offset: the common start slot when all rows have the same length (fast paths), else None.
        kv_len: number of cache slots to attend to after writing this step (max row length + T).
        key_valid: (B, kv_len) bool, slot holds a real token; None when all slots are real.
        key_positions: (B, kv_len) position of the token in each slot (for sliding windows).
    """

    positions: torch.Tensor
    token_mask: torch.Tensor | None
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    slots: torch.Tensor | None = None
    offset: int | None = 0
    kv_len: int = 0
    key_valid: torch.Tensor | None = None
    key_positions: torch.Tensor | None = None
    _masks: dict[object, torch.Tensor] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return self.positions.shape[1]

    def needs_mask(self) -> bool:
        """False when a plain causal (prefill from slot 0) or unmasked (one new token) attention is exact."""
        if self.key_valid is not None or self.offset is None:
            return True
        return not (self.offset == 0 or self.seq_len == 1)

    def softmax_mask(self, window: int | None = None) -> torch.Tensor:
        """Boolean (B, 1, T, kv_len) mask, True = may attend; built once per forward and window size.

        A query always sees its own slot (so a pad query never gets an all-masked row and NaNs), earlier
        slots holding real tokens, and with ``window`` only keys whose position is within ``window - 1``.
        """
        if window in self._masks:
            return self._masks[window]
        device = self.positions.device
        q_slots = self.slots if self.slots is not None else torch.arange(self.seq_len, device=device)[None]
        k_slots = torch.arange(self.kv_len, device=device)
        causal = k_slots[None, None, :] <= q_slots[:, :, None]  # (B, T, S)
        is_self = k_slots[None, None, :] == q_slots[:, :, None]
        allowed = causal
        if self.key_valid is not None:
            allowed = causal & (self.key_valid[:, None, :] | is_self)
        if window is not None:
            kpos = self.key_positions if self.key_positions is not None else self.positions
            near = (self.positions[:, :, None] - kpos[:, None, :]) < window
            allowed = allowed & (near | is_self)
        mask = allowed[:, None]  # (B, 1, T, S)
        self._masks[window] = mask
        return mask


class _Decodable(Protocol):
    """The mixer member ``Attention.new_state`` calls (mixers are ``nn.Module``s, typed as such)."""

    def new_state(
        self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]: ...


class Attention(nn.Module):
    """Projections + QK-norm + RoPE around a mixer. Weight shapes match HF (``q_proj``: (nh*hd, C))."""

    def __init__(self, config: ModelConfig, mixer: nn.Module) -> None:
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.kv_heads, c.head_size
        self.q_proj = nn.Linear(c.d_model, c.n_head * c.head_size, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.d_model, c.kv_heads * c.head_size, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.d_model, c.kv_heads * c.head_size, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.n_head * c.head_size, c.d_model, bias=c.out_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_size, c.norm_eps)
            self.k_norm = RMSNorm(c.head_size, c.norm_eps)
        self.qk_norm = c.qk_norm
        self.mixer = mixer

    @property
    def supports_decode(self) -> bool:
        return bool(getattr(self.mixer, "supports_decode", False))

    def new_state(
        self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Empty per-layer decode state (see the mixer)."""
        return cast(_Decodable, self.mixer).new_state(batch, max_len, device, dtype)

    def forward(
        self, x: torch.Tensor, step: Step, state: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if step.cos is not None and step.sin is not None:
            q, k = apply_rope(q, step.cos, step.sin), apply_rope(k, step.cos, step.sin)
        y = self.mixer(q, k, v, step, state)  # (B, T, nh * hd)
        gate = getattr(self.mixer, "gate", None)  # RetNet's swish output gate reads the block input
        if gate is not None:
            y = gate(x, y)
        return self.o_proj(y)


def expand_kv(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Repeat each of the nkv key/value heads ``n_head // nkv`` times: (B, nkv, T, hd) -> (B, nh, T, hd)."""
    rep = n_head // t.shape[1]
    return t if rep == 1 else t.repeat_interleave(rep, dim=1)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, hd) -> (B, T, nh * hd)."""
    B, nh, T, hd = y.shape
    return y.transpose(1, 2).reshape(B, T, nh * hd)
