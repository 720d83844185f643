"""A SASRec-style causal sequence model over user events, built from core-model's transformer blocks.

What it does: each event is the SUM of an item embedding, an event-type embedding and a time-gap embedding
(plus core-model's position encoding); a stack of core-model ``Block``s with causal attention (left padding
masked) turns the sequence into hidden states, and three heads read every position:

    next item        logits = h @ item_emb^T (tied, as SASRec)      -> full or sampled softmax
    next event type  linear over event-type ids                     -> softmax
    conversion       linear -> one logit: a purchase within the next ``horizon`` events -> sigmoid

``SeqRec.config`` is the backbone's ``ModelConfig`` (vocab = item ids) so the trainer's checkpoint code
saves and checks it like any GPT; the recommender-only knobs live in ``SeqRecConfig``. ``LOSSES`` maps
``full`` / ``sampled`` to the next-item loss.
What it does not do: tokenization (``vocab``), batching (``dataset``) or the training loop (``train``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanoforge.core_model.attention.base import Step
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.layers import POSITIONS, build_norm
from nanoforge.core_model.model import Block
from nanoforge.recommender.events import EVENT_TYPES
from nanoforge.recommender.vocab import N_GAP_BUCKETS


@dataclass(frozen=True)
class SeqRecConfig:
    """Sizes of the sequence model. ``n_items`` is the item vocab size (padding + buckets + known items)."""

    n_items: int
    d_model: int = 64  # embedding / residual width
    n_layer: int = 2  # transformer blocks (SASRec uses 2)
    n_head: int = 2  # attention heads
    max_len: int = 50  # events per input window (older events are dropped)
    dropout: float = 0.2  # SASRec uses 0.2 on ML-1M
    mlp: str = "gelu"  # core-model MLP kind
    norm: str = "layernorm"  # core-model norm kind
    positions: str = "learned"  # core-model position kind (learned / sinusoidal / rope / none)
    n_types: int = len(EVENT_TYPES) + 1  # event-type ids incl. padding
    n_gaps: int = N_GAP_BUCKETS  # time-gap ids incl. padding

    def backbone(self) -> ModelConfig:
        """The core-model config of the blocks (validated there: heads divide width, known kinds...)."""
        return ModelConfig(
            vocab_size=self.n_items,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            max_seq_len=self.max_len,
            mlp=self.mlp,
            norm=self.norm,
            positions=self.positions,
            dropout=self.dropout,
            tie_embeddings=True,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeqRecConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model keys {unknown}; accepted: {sorted(known)}")
        return cls(**data)


class SeqRec(nn.Module):
    """Causal transformer over (item, event type, time gap) tokens with next-item / type / conversion heads."""

    def __init__(self, rec: SeqRecConfig) -> None:
        super().__init__()
        self.rec = rec
        self.config = rec.backbone()  # trainer.checkpoint saves / checks this like a GPT's config
        c = self.config
        self.item_emb = nn.Embedding(rec.n_items, c.d_model, padding_idx=0)
        self.type_emb = nn.Embedding(rec.n_types, c.d_model, padding_idx=0)
        self.gap_emb = nn.Embedding(rec.n_gaps, c.d_model, padding_idx=0)
        self.pos_add, self.rotary = POSITIONS[c.positions](c)
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c.n_layer))
        self.norm_f = build_norm(c)
        self.type_head = nn.Linear(c.d_model, rec.n_types)
        self.conv_head = nn.Linear(c.d_model, 1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=c.init_std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        for emb in (self.item_emb, self.type_emb, self.gap_emb):
            with torch.no_grad():
                emb.weight[0].zero_()

    def forward(self, items: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, C) of left-padded id tensors (B, T); id 0 is padding in all three."""
        if not (items.shape == types.shape == gaps.shape) or items.dim() != 2:
            raise ValueError(
                f"items/types/gaps must be equal (B, T) tensors, got {tuple(items.shape)}, "
                f"{tuple(types.shape)}, {tuple(gaps.shape)}"
            )
        T = items.shape[1]
        if self.rec.max_len < T:
            raise ValueError(f"sequence of {T} events exceeds max_len={self.rec.max_len}; keep the last ones")
        mask = items != 0  # (B, T) real events
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T) 0 = oldest event in the window
        if bool(mask.all()):
            step = Step(positions, None, offset=0, kv_len=T)
        else:
            step = Step(positions, mask, offset=0, kv_len=T, key_valid=mask)
        if self.rotary is not None:
            cos, sin = self.rotary(positions)  # (B, T, hd)
            step.cos, step.sin = cos[:, None], sin[:, None]  # (B, 1, T, hd)
        x = self.item_emb(items) + self.type_emb(types) + self.gap_emb(gaps)  # (B, T, C)
        if self.pos_add is not None:
            x = x + self.pos_add(positions).to(x.dtype)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, step, None)
        return self.norm_f(x)

    def item_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every item id: (..., C) -> (..., n_items)."""
        return h @ self.item_emb.weight.t()

    def type_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Next-event-type logits (..., n_types)."""
        return self.type_head(h)

    def conversion_logit(self, h: torch.Tensor) -> torch.Tensor:
        """Logit that a purchase happens within the horizon: (..., C) -> (...)."""
        return self.conv_head(h).squeeze(-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ------------------------------------------------------------------------------------------ item losses


def full_softmax_loss(
    model: SeqRec, h: torch.Tensor, target: torch.Tensor, n_negatives: int, gen: torch.Generator
) -> torch.Tensor:
    """Cross-entropy over ALL item ids at the positions with a target (h: (N, C), target: (N,))."""
    logits = model.item_logits(h)  # (N, V)
    logits[:, 0] = float("-inf")  # never predict padding
    return F.cross_entropy(logits, target)


def sampled_softmax_loss(
    model: SeqRec, h: torch.Tensor, target: torch.Tensor, n_negatives: int, gen: torch.Generator
) -> torch.Tensor:
    """Cross-entropy over the target and ``n_negatives`` uniform item ids shared by the batch.

    Uniform sampling needs no log-Q correction (every negative has the same proposal probability); a
    negative that equals a row's target ("accidental hit") is masked out for that row.
    """
    V = model.rec.n_items
    neg = torch.randint(1, V, (n_negatives,), generator=gen).to(h.device)  # (K,)
    w = model.item_emb.weight
    pos_logit = (h * w[target]).sum(-1, keepdim=True)  # (N, 1)
    neg_logit = h @ w[neg].t()  # (N, K)
    neg_logit = neg_logit.masked_fill(neg[None, :] == target[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)  # (N, 1 + K)
    return F.cross_entropy(logits, torch.zeros_like(target))


LOSSES: dict[str, Callable[[SeqRec, torch.Tensor, torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "full": full_softmax_loss,
    "sampled": sampled_softmax_loss,
}
