"""The GPT: token embedding, a stack of blocks (norm, attention, norm, MLP), final norm, LM head.

What it does: assembles a decoder-only transformer from a ``ModelConfig`` by looking up builders in
registries (norms, MLPs, positions from ``layers``; attention mixers from ``attention``), initialises it,
and runs it on token ids, with optional left padding (``attention_mask``), explicit ``positions`` and a
decode ``state``. Named presets live in ``PRESETS``. One-token decode steps with a state go through the lean
``fast_decode.FastDecoder`` when it applies (``model.fast_decode = False`` forces the reference path).
What it does not do: sampling (``generate``), files (``checkpoint``), or anything with text.

Module names follow HF (tok_emb / blocks[i].attn.q_proj / mlp.gate_proj / norm_f / lm_head) so weight maps
and peft ``target_modules`` read naturally.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from nanoforge.core_model.attention import ATTENTION
from nanoforge.core_model.attention.base import Attention, Step
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.fast_decode import FastDecoder
from nanoforge.core_model.layers import MLPS, POSITIONS, build_norm
from nanoforge.core_model.state import ModelState


class Block(nn.Module):
    """One transformer block; ``pre`` norm: x + f(norm(x)), ``post`` norm: norm(x + f(x))."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = build_norm(config)
        self.attn = Attention(config, ATTENTION[config.layer_attention(layer)](config, layer))
        self.norm2 = build_norm(config)
        self.mlp = MLPS[config.mlp](config)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.pre_norm = config.norm_placement == "pre"

    def forward(self, x: torch.Tensor, step: Step, state: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), step, state))
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, step, state)))
        return self.norm2(x + self.drop(self.mlp(x)))


class GPT(nn.Module):
    """Decoder-only transformer over token ids. ``forward`` returns fp32 logits (B, T, V)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        additive, rotary = POSITIONS[config.positions](config)
        if config.positions == "learned":
            assert additive is not None  # the "learned" builder always returns an nn.Embedding
            self.pos_emb = additive
        else:
            self.pos_enc = additive  # sinusoidal (no parameters) or None
        self.rotary = rotary
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = build_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # Decode steps (one token per row with a state, inference only) take ``fast_decode.FastDecoder``'s
        # lean path when it applies; False forces the reference path below (tests compare the two).
        self.fast_decode = True
        self._fast = FastDecoder(self)
        # GPT-2 scaled init: residual projections shrink with depth so the stream's variance stays ~constant.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def block_list(self) -> list[Block]:
        """The blocks in order, typed as ``Block`` (items of an ``nn.ModuleList`` type-check as ``nn.Module``)."""
        return cast("list[Block]", list(self.blocks))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    @property
    def supports_decode(self) -> bool:
        """True when every layer can run incrementally from a ``ModelState``."""
        return all(b.attn.supports_decode for b in self.block_list())

    def new_state(self, batch_size: int, max_len: int | None = None) -> ModelState:
        """Preallocated decode state for ``batch_size`` rows of up to ``max_len`` tokens (default max_seq_len)."""
        if not self.supports_decode:
            kinds = sorted(
                {
                    self.config.layer_attention(i)
                    for i, b in enumerate(self.block_list())
                    if not b.attn.supports_decode
                }
            )
            raise ValueError(
                f"attention {kinds} has no incremental decode state; use generate(..., use_cache=False)"
            )
        max_len = max_len or self.config.max_seq_len
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"new_state needs batch_size > 0 and max_len > 0, got {batch_size}, {max_len}")
        p = self.tok_emb.weight
        dtype = p.dtype
        layers = [b.attn.new_state(batch_size, max_len, p.device, dtype) for b in self.block_list()]
        return ModelState(layers, batch_size, max_len, p.device)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        state: ModelState | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for token ids.

        Args:
            idx: (B, T) token ids.
            state: decode state; the T tokens are appended to it (prefill or decode step).
            attention_mask: (B, T) 1 = real token, 0 = padding (left padding); None = all real.
            positions: (B, T) position ids; default counts real tokens per row (continuing the state).
            last_only: return only the last position's logits (B, 1, V) — cheaper for generation.

        Returns:
            fp32 logits (B, T, V), or (B, 1, V) with ``last_only``.
        """
        if self.fast_decode and self._fast.why_not(idx, state, attention_mask, positions) is None:
            assert state is not None
            if state.batch_size != idx.shape[0]:
                raise ValueError(f"state has batch_size={state.batch_size} but idx has {idx.shape[0]} rows")
            return self._fast.step(idx, state)
        if idx.dim() != 2:
            raise ValueError(f"idx must be a (batch, seq) tensor of token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        token_mask = None
        if attention_mask is not None:
            if attention_mask.shape != idx.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != idx shape {tuple(idx.shape)}"
                )
            token_mask = attention_mask.bool()
            if bool(token_mask.all()):
                token_mask = None
        step = self._make_step(B, T, idx.device, state, token_mask, positions)
        x = self.drop(self.embed(idx, step.positions))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, step, state.layers[i] if state is not None else None)
        if state is not None:
            state.advance(token_mask, T)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.lm_head(self.norm_f(x)).float()  # (B, T, V)
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings plus additive position encodings (learned / sinusoidal), (B, T) -> (B, T, C)."""
        x = self.tok_emb(idx)  # (B, T, C)
        if self.config.positions == "learned":
            x = x + self.pos_emb(positions)
        elif self.pos_enc is not None:
            x = x + self.pos_enc(positions).to(x.dtype)
        return x

    def _make_step(
        self,
        B: int,
        T: int,
        device: torch.device,
        state: ModelState | None,
        token_mask: torch.Tensor | None,
        positions: torch.Tensor | None,
    ) -> Step:
        if positions is not None and positions.shape != (B, T):
            raise ValueError(f"positions shape {tuple(positions.shape)} != idx shape {(B, T)}")
        if state is not None:
            if state.batch_size != B:
                raise ValueError(f"state has batch_size={state.batch_size} but idx has {B} rows")
            s = state.prepare(token_mask, T, positions)
            step = Step(
                s.positions,
                token_mask,
                slots=s.slots,
                offset=s.offset,
                kv_len=s.kv_len,
                key_valid=s.key_valid,
            )
        else:
            if positions is None:
                if token_mask is None:
                    positions = torch.arange(T, device=device)[None].expand(B, T)
                else:
                    positions = (token_mask.long().cumsum(1) - 1).clamp(min=0)
            step = Step(positions, token_mask, offset=0, kv_len=T, key_valid=token_mask)
        self._check_positions(step.positions)
        if self.rotary is not None:
            cos, sin = self.rotary(step.positions)  # (B, T, hd)
            step.cos, step.sin = cos[:, None], sin[:, None]  # (B, 1, T, hd), shared by every layer
        return step

    def _check_positions(self, positions: torch.Tensor) -> None:
        limited = self.config.positions == "learned" or "linformer" in self.config.attention_kinds()
        if limited:
            top = int(positions.max().item()) if positions.numel() else 0
            if top >= self.config.max_seq_len:
                raise ValueError(
                    f"sequence reaches position {top} but max_seq_len={self.config.max_seq_len} "
                    f"(positions={self.config.positions!r}); shorten the input, nothing is truncated silently"
                )

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------------- builders


def build_gpt(config: ModelConfig) -> GPT:
    """The standard decoder-only GPT."""
    return GPT(config)


MODEL_BUILDERS: dict[str, Callable[[ModelConfig], GPT]] = {"gpt": build_gpt}

PRESETS: dict[str, ModelConfig] = {
    # GPT-2 small (124M): learned positions, LayerNorm with bias, GELU(tanh), biases everywhere, tied.
    "gpt2-small": ModelConfig(
        vocab_size=50304,
        n_layer=12,
        n_head=12,
        d_model=768,
        max_seq_len=1024,
        mlp="gelu_tanh",
        norm="layernorm",
        positions="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        norm_bias=True,
        tie_embeddings=True,
    ),
    # A Llama-shaped toy: RMSNorm, SwiGLU, RoPE, GQA, untied, no biases.
    "llama-tiny": ModelConfig(
        vocab_size=8192,
        n_layer=8,
        n_head=8,
        n_kv_head=2,
        d_model=512,
        max_seq_len=2048,
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=1e-6,
        positions="rope",
        tie_embeddings=False,
    ),
    # nanoGPT's Shakespeare-char model: 6 layers, 384 wide, 256 context, 65-symbol vocabulary (padded).
    "shakespeare-char": ModelConfig(
        vocab_size=128,
        n_layer=6,
        n_head=6,
        d_model=384,
        max_seq_len=256,
        mlp="gelu",
        positions="learned",
        dropout=0.2,
    ),
}


def build_model(config: ModelConfig | str, kind: str = "gpt") -> GPT:
    """Build a model from a config or a preset name.

    Raises:
        ValueError: unknown preset or builder kind.
    """
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; accepted: {', '.join(PRESETS)}")
        config = PRESETS[config]
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"unknown model kind {kind!r}; accepted: {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[kind](config)
