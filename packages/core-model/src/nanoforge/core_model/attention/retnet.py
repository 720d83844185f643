"""RetNet retention (Sun et al. 2023): causal attention without softmax and with per-head exponential decay.

What it does: for head h with decay ``gamma_h = 1 - 2**(-5 - h)`` (multi-scale: fast-forgetting to
slow-forgetting heads),

    out_n = sum_{m<=n} gamma_h**(n - m) (q_n . k_m) v_m

in the paper's three equivalent forms:
    * parallel  — one masked (T, T) decay matrix D, ``((q k^T) * D) v`` (training / prompts);
    * recurrent — ``S_n = gamma * S_{n-1} + k_n^T v_n``, ``out_n = q_n S_n`` (decoding, O(1) per token);
    * chunkwise — parallel inside chunks of C tokens, recurrent across chunks (long prompts, O(T C)).
The distance ``n - m`` counts real tokens only (pads neither decay the state nor enter it), so a
left-padded row gives the same result as the unpadded one. Keys are scaled by ``hd**-0.5``; the output
goes through a per-head RMS norm (``g_norm``, the paper's GroupNorm) and a swish gate ``silu(g_proj(x))``.
What it does not do: xPos (the model's RoPE, when configured, plays that role) or the paper's
decay-matrix row normalisation (the per-head norm makes the output scale-invariant anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoforge.core_model.attention.base import Step, expand_kv, merge_heads
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.layers import RMSNorm


def decay_log(n_head: int) -> torch.Tensor:
    """log(gamma_h) for each head: log(1 - 2**(-5 - h))."""
    return torch.log(1 - 2.0 ** (-5.0 - torch.arange(n_head, dtype=torch.float32)))


def retention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    e: torch.Tensor,
    log_g: torch.Tensor,
    S: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parallel retention over one chunk with incoming state ``S`` (None = empty).

    Args:
        q, k, v: (B, nh, T, hd) fp32, pads already zeroed in k/v; e: (B, T) 1 for real tokens, 0 for pads;
        log_g: (nh,) log decays; S: (B, nh, hd, hd) state before the chunk.
    Returns:
        out (B, nh, T, hd) and the state after the chunk.
    """
    c = e.float().cumsum(1)  # (B, T) real tokens seen so far in the chunk
    lg = log_g[None, :, None]  # (1, nh, 1)
    dist = (c[:, None, :, None] - c[:, None, None, :]).clamp(min=0)  # (B, 1, T, T) decay steps n <- m
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    D = torch.exp(lg[..., None] * dist).masked_fill(~causal, 0.0)  # (B, nh, T, T)
    out = ((q @ k.transpose(-2, -1)) * D) @ v  # (B, nh, T, hd)
    c_end = c[:, -1:]  # (B, 1)
    tail = torch.exp(lg * (c_end[:, None, :] - c[:, None, :]))  # (B, nh, T) decay from token m to chunk end
    S_new = (k * tail[..., None]).transpose(-2, -1) @ v  # (B, nh, hd, hd)
    if S is not None:
        out = out + (q * torch.exp(lg * c[:, None, :])[..., None]) @ S
        S_new = S_new + torch.exp(lg * c_end[:, None, :])[..., None] * S  # (B, nh, 1, 1) * S
    return out, S_new


def retention_parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, e: torch.Tensor, log_g: torch.Tensor
) -> torch.Tensor:
    """Parallel form: the whole sequence as one chunk."""
    return retention_chunk(q, k, v, e, log_g, None)[0]


def retention_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    e: torch.Tensor,
    log_g: torch.Tensor,
    chunk: int,
    S: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise form: parallel within chunks of ``chunk`` tokens, state carried across them."""
    outs = []
    for s in range(0, q.shape[2], chunk):
        sl = slice(s, s + chunk)
        o, S = retention_chunk(q[:, :, sl], k[:, :, sl], v[:, :, sl], e[:, sl], log_g, S)
        outs.append(o)
    assert S is not None
    return torch.cat(outs, dim=2), S


def retention_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, e: torch.Tensor, log_g: torch.Tensor, S: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recurrent form, token by token: ``S = gamma**e_t * S + k_t^T v_t``; ``out_t = q_t S``."""
    outs = []
    for t in range(q.shape[2]):
        g = torch.exp(log_g[None, :] * e[:, t : t + 1].float())  # (B, nh)
        S = g[..., None, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, nh, hd, hd)
        outs.append((q[:, :, t, None, :] @ S)[:, :, 0])  # (B, nh, hd)
    return torch.stack(outs, dim=2), S


class RetentionMixer(nn.Module):
    """Multi-scale retention with decode state ``S`` (B, nh, hd, hd), gated output."""

    supports_decode = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_size
        self.log_gamma = decay_log(config.n_head)  # fp32 attribute: model.to(bfloat16) must not round it
        self.form = config.attention_options.get("retnet_form", "parallel")
        self.chunk = config.attention_options.get("retnet_chunk", 64)
        self.g_proj = nn.Linear(config.d_model, config.n_head * config.head_size, bias=False)
        self.g_norm = RMSNorm(config.head_size, config.norm_eps)

    def new_state(
        self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        return {
            "S": torch.zeros(
                batch, self.n_head, self.head_dim, self.head_dim, device=device, dtype=torch.float32
            )
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
        k = expand_kv(k, self.n_head).float() * self.head_dim**-0.5  # (B, nh, T, hd)
        v = expand_kv(v, self.n_head).float()
        q = q.float()
        e = (
            step.token_mask
            if step.token_mask is not None
            else torch.ones_like(step.positions, dtype=torch.bool)
        )
        k, v = k * e[:, None, :, None], v * e[:, None, :, None]
        S = state["S"] if state is not None else None
        log_g = self.log_gamma.to(q.device)
        if S is not None and q.shape[2] == 1:
            y, S_new = retention_recurrent(q, k, v, e, log_g, S)
        elif self.form == "chunkwise":
            y, S_new = retention_chunkwise(q, k, v, e, log_g, self.chunk, S)
        else:
            y, S_new = retention_chunk(q, k, v, e, log_g, S)
        if state is not None:
            state["S"].copy_(S_new)
        y = self.g_norm(y)  # per-head norm over hd, (B, nh, T, hd)
        return merge_heads(y.to(dtype))

    def gate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Swish output gate: ``silu(g_proj(x)) * y``."""
        return F.silu(self.g_proj(x)) * y


def build_retnet(config: ModelConfig, layer: int) -> nn.Module:
    """RetNet multi-scale retention."""
    return RetentionMixer(config)
