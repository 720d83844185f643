"""Per-request trainable token rows: an adapter's replacement rows of the token embedding / LM head.

What it does: an adapter trained with peft's ``trainable_token_indices`` (nanoforge: ``lora.trainable_tokens``)
carries new values for a few rows of ``tok_emb`` (and of ``lm_head``; a tied head reads the embedding's rows).
``MultiTokenRows`` wraps the embedding or the head and, like ``MultiLoRALinear``, applies each adapter only
to the batch rows routed to it (the shared ``LoRARouting``):

- embedding: positions whose token id is one of the adapter's ids get the adapter's row instead of the base
  row — ``y[r, t] = rows[slot(x[r, t])]``;
- head: the adapter's ids' logit columns are recomputed with its rows — ``y[r, :, ids] = h[r] @ rows^T``.

So requests on different adapters (or none) still share one batch, and the base weight is never modified.
What it does not do: read files (``peft_format``), decide what to wrap (``adapters``), train, or merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from nanoforge.inference_server.lora.linear import LoRARouting


@dataclass
class TokenRowWeights:
    """One adapter's rows for one layer: ``ids`` (n,) token ids, ``rows`` (n, d) their new values."""

    ids: torch.Tensor
    rows: torch.Tensor

    @property
    def num_parameters(self) -> int:
        """Number of values in ``rows``."""
        return self.rows.numel()


class MultiTokenRows(nn.Module):
    """An embedding (``kind="embed"``) or LM head (``kind="head"``) plus per-row-group replaced token rows."""

    def __init__(self, base: nn.Module, routing: LoRARouting, kind: str) -> None:
        super().__init__()
        if kind not in ("embed", "head"):
            raise ValueError(f"MultiTokenRows kind={kind!r}; accepted: embed, head")
        self.base = base
        self.routing = routing
        self.kind = kind
        self.vocab_size = int(
            cast(Any, base).num_embeddings if kind == "embed" else cast(Any, base).out_features
        )
        self.dim = int(cast(Any, base).embedding_dim if kind == "embed" else cast(Any, base).in_features)
        self.adapters: dict[str, TokenRowWeights] = {}  # plain dict: not part of the model's state_dict
        self._slots: dict[
            str, torch.Tensor
        ] = {}  # adapter -> (vocab,) slot of each id in its rows, -1 = none

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (device / dtype / shape for callers that inspect it; never modified)."""
        return cast(torch.Tensor, self.base.weight)

    def add(self, name: str, w: TokenRowWeights) -> None:
        """Attach adapter ``name``'s rows. Raises ValueError naming a bad id or a shape that does not fit."""
        if w.rows.ndim != 2 or w.rows.shape != (w.ids.numel(), self.dim):
            raise ValueError(
                f"adapter {name!r}: token rows of shape {tuple(w.rows.shape)} for {w.ids.numel()} ids do not fit "
                f"a {self.kind} of width {self.dim}; expected ({w.ids.numel()}, {self.dim})"
            )
        bad = [int(i) for i in w.ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(
                f"adapter {name!r}: token id {bad[0]} is not in the model's vocabulary "
                f"(vocab_size={self.vocab_size}); accepted: ids 0..{self.vocab_size - 1}"
            )
        slots = torch.full((self.vocab_size,), -1, dtype=torch.long, device=w.ids.device)
        slots[w.ids] = torch.arange(w.ids.numel(), device=w.ids.device)
        self.adapters[name] = w
        self._slots[name] = slots

    def remove(self, name: str) -> None:
        """Detach adapter ``name`` (no error when it has no rows here)."""
        self.adapters.pop(name, None)
        self._slots.pop(name, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for name, rows, w in self.routing.active(self.adapters, x.shape[0]):
            xr, yr = x.index_select(0, rows), y.index_select(0, rows)
            if self.kind == "embed":
                slot = self._slots[name][xr]  # (n, T): index into w.rows, -1 = base row
                hit = slot >= 0
                if not bool(hit.any()):
                    continue
                yr[hit] = w.rows[slot[hit]].to(yr.dtype)  # (hits, d)
            else:
                cols = xr @ w.rows.T.to(xr.dtype)  # (n, T, d) @ (d, k) -> (n, T, k)
                bias = getattr(self.base, "bias", None)
                yr[..., w.ids] = (cols if bias is None else cols + bias[w.ids]).to(yr.dtype)
            y = y.index_copy(0, rows, yr)
        return y

    def extra_repr(self) -> str:
        return f"kind={self.kind}, adapters={sorted(self.adapters)}"


__all__ = ["MultiTokenRows", "TokenRowWeights"]
