"""KV memory of the running batch: a fixed number of ``ModelState`` rows, active rows packed at the front.

Choice: one preallocated ``ModelState`` of ``capacity`` rows x ``max_len`` slots (core-model's decode
state), not a paged block table. A request owns one whole row from admission to finish, so attention runs
on core-model's own per-row cache with its exact per-row masks, and every attention variant (softmax KV,
sliding-window ring, recurrent linear/RetNet/Performer/Linformer states) works unchanged.
Trade-off: a short request still reserves ``max_len`` slots (internal fragmentation), so the KV budget buys
``budget // max_len`` concurrent requests; a block table (vLLM's PagedAttention) would fit more short
requests in the same memory but needs a gather-based attention kernel core-model does not have.

Active rows are kept in ``0 .. count-1`` so a decode step runs on a zero-copy view of the first ``count``
rows (slices share storage, so the model's in-place cache writes land in the big state). Removing a row
moves the last active row into the hole (one row copy) and resets the vacated row at once.
What it does not do: decide who gets a row (``scheduler``) or cache prefixes (``prefix_cache``).
"""

from __future__ import annotations

import torch

from nanoforge.core_model.model import GPT
from nanoforge.core_model.state import ModelState


def row_view(state: ModelState, n: int) -> ModelState:
    """A ``ModelState`` over rows ``0 .. n-1`` of ``state`` that shares its storage (no copy)."""
    layers = [{k: t[:n] for k, t in layer.items()} for layer in state.layers]
    view = ModelState(layers, n, state.max_len, state.lengths.device)
    view.lengths = state.lengths[:n]
    view.next_pos = state.next_pos[:n]
    view.valid = state.valid[:n]
    lengths = view.lengths.tolist()
    view.offset = lengths[0] if all(x == lengths[0] for x in lengths) else None
    view.padded = bool((view.valid.long().sum(1) != view.lengths).any())
    return view


def set_prefix(state: ModelState, n: int) -> None:
    """Mark the first ``n`` slots of a 1-row state as filled with real tokens at positions 0..n-1."""
    state.lengths[0] = n
    state.next_pos[0] = n
    state.valid[0] = False
    state.valid[0, :n] = True
    state.offset = n
    state.padded = False


def row_bytes(model: GPT, max_len: int) -> int:
    """Bytes of decode state one row of ``max_len`` slots takes for ``model``."""
    one = model.new_state(1, max_len)
    return sum(t.numel() * t.element_size() for layer in one.layers for t in layer.values())


class RowTable:
    """The running batch's decode state.

    Attributes:
        state: the full ``capacity``-row state.
        count: number of active rows (rows ``0 .. count-1``).
    """

    def __init__(self, model: GPT, capacity: int, max_len: int) -> None:
        self.capacity = capacity
        self.max_len = max_len
        self.state = model.new_state(capacity, max_len)
        self.count = 0
        self._view: ModelState | None = None

    @property
    def free(self) -> int:
        """Rows still available."""
        return self.capacity - self.count

    def add(self, src: ModelState) -> int:
        """Copy row 0 of a prefilled 1-row state into the next free row; returns that row."""
        if self.count >= self.capacity:
            raise RuntimeError("RowTable.add called with no free row (the scheduler must reserve one)")
        row = self.count
        self.state.copy_rows_from(src, [0], [row])
        self.count += 1
        self._view = None
        return row

    def remove(self, row: int) -> int | None:
        """Free ``row``. Returns the old index of the row moved into it (the last active row), or None."""
        last = self.count - 1
        moved = None
        if row != last:
            self.state.copy_rows_from(self.state, [last], [row])
            moved = last
        self.state.reset_rows([last])
        self.count -= 1
        self._view = None
        return moved

    def view(self) -> ModelState:
        """The active rows as one ``ModelState`` (rebuilt only when membership changed)."""
        if self._view is None:
            self._view = row_view(self.state, self.count)
        return self._view

    def used_slots(self) -> int:
        """Slots holding tokens across the active rows."""
        return int(self.state.lengths[: self.count].sum().item()) if self.count else 0

    def last_tokens_tensor(self, tokens: list[int]) -> torch.Tensor:
        """(count, 1) tensor of the tokens to feed the next decode step."""
        return torch.tensor(tokens, dtype=torch.long, device=self.state.lengths.device)[:, None]
