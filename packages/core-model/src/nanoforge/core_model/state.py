"""One decode state for every attention variant: per-layer tensors plus per-row bookkeeping.

What it does: ``ModelState`` holds, for a batch of B rows, each layer's state dict (a preallocated softmax
KV cache, a sliding-window ring buffer, or a recurrent matrix state for linear / Performer / Linformer /
RetNet layers) and, per row, how many cache slots are used (``lengths``), the next position id
(``next_pos``) and which slots hold real tokens (``valid``). Every layer tensor is batch-first and all-zero
means "empty", so rows can be managed generically.

Rows for a server (continuous batching):
    * add a request: prefill it alone, ``one = model.new_state(1, L); model(prompt, state=one)``, then
      ``state.copy_rows_from(one, [0], [row])`` into a free row of the running batch;
    * finish / evict a request: ``state.reset_rows([row])`` (the row is empty again and may be reused);
    * shrink the batch: ``state = state.select(kept_rows)`` (a new, compacted state).
Rows whose lengths differ are handled exactly (per-row cache writes and masks); when all rows are aligned
and unpadded the fast paths (in-place slice writes, mask-free SDPA) are used.
What it does not do: run the model or sample (``model``, ``generate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class StepSlots:
    """Where the T tokens of one forward call go. See ``attention.base.Step`` for the meaning."""

    positions: torch.Tensor  # (B, T)
    slots: torch.Tensor  # (B, T)
    offset: int | None
    kv_len: int
    key_valid: torch.Tensor | None  # (B, kv_len) or None when every used slot is real


class ModelState:
    """Decode state of a batch: ``layers[i]`` is layer i's dict of batch-first tensors."""

    def __init__(
        self, layers: list[dict[str, torch.Tensor]], batch_size: int, max_len: int, device: torch.device
    ):
        self.layers = layers
        self.batch_size = batch_size
        self.max_len = max_len
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # cache slots used per row
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # next position id per row
        self.valid = torch.zeros(
            batch_size, max_len, dtype=torch.bool, device=device
        )  # slot holds a real token
        self.offset: int | None = 0  # common row length while all rows are aligned, else None
        self.padded = False  # some used slot holds a pad (masks needed)

    # ---------------------------------------------------------------------------------- forward protocol
    def prepare(
        self, token_mask: torch.Tensor | None, seq_len: int, positions: torch.Tensor | None
    ) -> StepSlots:
        """Reserve slots for ``seq_len`` new tokens per row and derive their positions (before the forward).

        Raises:
            ValueError: if a row would exceed ``max_len`` slots.
        """
        B, T = self.batch_size, seq_len
        used = self._room_for(T)
        device = self.lengths.device
        steps = torch.arange(T, device=device)
        slots = self.lengths[:, None] + steps  # (B, T)
        if positions is None:
            if token_mask is None:
                positions = self.next_pos[:, None] + steps
            else:
                positions = self.next_pos[:, None] + (token_mask.long().cumsum(1) - 1).clamp(min=0)
        kv_len = used + T
        if token_mask is not None:
            rows = torch.arange(B, device=device)[:, None]
            self.valid[rows, slots] = token_mask
            self.padded = self.padded or not bool(token_mask.all())
        else:
            if self.offset is not None:
                self.valid[:, self.offset : self.offset + T] = True
            else:
                self.valid[torch.arange(B, device=device)[:, None], slots] = True
        key_valid = self.valid[:, :kv_len] if (self.padded or self.offset is None) else None
        return StepSlots(
            positions=positions, slots=slots, offset=self.offset, kv_len=kv_len, key_valid=key_valid
        )

    def reserve_one(self) -> tuple[int | None, int]:
        """``prepare`` for one real token per row at default positions (the decode fast path).

        Marks each row's next slot as real. Returns (the common slot, or None when rows are unaligned and each
        writes at its own ``lengths``; the kv_len to attend to).
        """
        used = self._room_for(1)
        if self.offset is not None:
            self.valid[:, used] = True
            return used, used + 1
        self.valid[torch.arange(self.batch_size, device=self.valid.device), self.lengths] = True
        return None, used + 1

    def _room_for(self, T: int) -> int:
        """Slots used by the longest row, after checking ``T`` more fit."""
        used = self.offset if self.offset is not None else int(self.lengths.max().item())
        if used + T > self.max_len:
            raise ValueError(
                f"decode state is full: {used} slots used + {T} new tokens > max_len={self.max_len}; "
                "create the state with a larger max_len"
            )
        return used

    def advance(self, token_mask: torch.Tensor | None, seq_len: int) -> None:
        """Commit ``seq_len`` tokens per row (after the forward)."""
        self.lengths += seq_len
        if token_mask is None:
            self.next_pos += seq_len
        else:
            self.next_pos += token_mask.long().sum(1)
        if self.offset is not None:
            self.offset += seq_len

    # ------------------------------------------------------------------------------------ row management
    def reset_rows(self, rows: Sequence[int]) -> None:
        """Empty ``rows`` in place (all their layer tensors zeroed, length and position back to 0)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.lengths.device)
        for layer in self.layers:
            for t in layer.values():
                t[idx] = 0
        self.lengths[idx] = 0
        self.next_pos[idx] = 0
        self.valid[idx] = False
        self._recompute_flags()

    def select(self, rows: Sequence[int]) -> ModelState:
        """A new state holding only ``rows`` (in that order); tensors are copied."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.lengths.device)
        layers = [{k: t.index_select(0, idx) for k, t in layer.items()} for layer in self.layers]
        out = ModelState(layers, len(idx), self.max_len, self.lengths.device)
        out.lengths = self.lengths.index_select(0, idx)
        out.next_pos = self.next_pos.index_select(0, idx)
        out.valid = self.valid.index_select(0, idx)
        out._recompute_flags()
        return out

    def copy_rows_from(self, src: ModelState, src_rows: Sequence[int], dst_rows: Sequence[int]) -> None:
        """Copy rows of another state (same model, same max_len) into ``dst_rows`` of this one."""
        if src.max_len != self.max_len or len(src.layers) != len(self.layers):
            raise ValueError(
                f"cannot copy rows between states of different shape (max_len {src.max_len} vs {self.max_len}, "
                f"{len(src.layers)} vs {len(self.layers)} layers)"
            )
        if len(src_rows) != len(dst_rows):
            raise ValueError(
                f"src_rows ({len(src_rows)}) and dst_rows ({len(dst_rows)}) must have the same length"
            )
        s = torch.as_tensor(list(src_rows), dtype=torch.long, device=self.lengths.device)
        d = torch.as_tensor(list(dst_rows), dtype=torch.long, device=self.lengths.device)
        for mine, theirs in zip(self.layers, src.layers):
            for key, t in mine.items():
                t[d] = theirs[key][s]
        self.lengths[d] = src.lengths[s]
        self.next_pos[d] = src.next_pos[s]
        self.valid[d] = src.valid[s]
        self._recompute_flags()

    def _recompute_flags(self) -> None:
        lengths = self.lengths.tolist()
        self.offset = lengths[0] if lengths and all(n == lengths[0] for n in lengths) else None
        real_per_row = self.valid.long().sum(1)
        self.padded = bool((real_per_row != self.lengths).any())

    def __repr__(self) -> str:
        return (
            f"ModelState(batch_size={self.batch_size}, max_len={self.max_len}, "
            f"lengths={self.lengths.tolist()}, layers={len(self.layers)})"
        )
