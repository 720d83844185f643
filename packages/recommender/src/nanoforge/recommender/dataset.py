"""Token sequences -> training batches and inference inputs for the sequence model.

What it does: ``TrainData`` tokenizes each user's TRAINING events once and attaches per-position conversion
labels (1 = a purchase among the next ``horizon`` events, 0 = none, -1 = unknown because the training
sequence ends before the horizon does: censored, left out of the loss). ``sample`` draws a batch of random
windows (user uniformly, window end uniformly) with a ``torch.Generator`` whose state is the data state
saved in checkpoints, so a resumed run draws exactly the same batches. ``encode`` left-pads histories for
inference (the last ``max_len`` events; the first kept event keeps its real time gap).
What it does not do: split data (``splits``) or run the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nanoforge.recommender.events import Event, event_type_id
from nanoforge.recommender.vocab import ItemVocab, tokenize

PURCHASE = event_type_id("purchase")


def conversion_labels(types: np.ndarray, horizon: int) -> np.ndarray:
    """Per position t: 1 if a purchase is among events t+1..t+horizon, 0 if not, -1 if not observable.

    Example (p = purchase, horizon 2): types [v, c, p, v] -> [1, 1, -1, -1]
    (position 2: no purchase in the single remaining event, but the horizon runs past the end -> -1).
    """
    n = len(types)
    out = np.full(n, -1, dtype=np.int64)
    is_p = types == PURCHASE
    for t in range(n):
        future = is_p[t + 1 : t + 1 + horizon]
        if future.any():
            out[t] = 1
        elif t + horizon < n:
            out[t] = 0
    return out


@dataclass
class Seq:
    """One user's tokenized events plus conversion labels (all int64 arrays of the same length)."""

    items: np.ndarray
    types: np.ndarray
    gaps: np.ndarray
    conv: np.ndarray


class TrainData:
    """Tokenized training sequences and a seeded random-window sampler."""

    def __init__(
        self, train: dict[str, list[Event]], vocab: ItemVocab, *, max_len: int, horizon: int = 5
    ) -> None:
        if horizon <= 0:
            raise ValueError(f"horizon={horizon!r} must be a positive int (events)")
        self.max_len = max_len
        self.seqs: list[Seq] = []
        for events in train.values():
            if len(events) < 2:  # nothing to predict
                continue
            items, types, gaps = tokenize(events, vocab)
            self.seqs.append(Seq(items, types, gaps, conversion_labels(types, horizon)))
        if not self.seqs:
            raise ValueError("no user has 2 or more training events; nothing to train on")
        self.n_events = sum(len(s.items) for s in self.seqs)

    def sample(self, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch of windows: inputs (B, T) and per-position targets (0 / -1 = no target)."""
        T = self.max_len
        users = torch.randint(len(self.seqs), (batch_size,), generator=gen).tolist()
        u = torch.rand(batch_size, generator=gen).tolist()
        out = {k: np.zeros((batch_size, T), dtype=np.int64) for k in ("items", "types", "gaps", "next_item")}
        out["next_type"] = np.zeros((batch_size, T), dtype=np.int64)
        out["conv"] = np.full((batch_size, T), -1, dtype=np.int64)
        for b, (ui, r) in enumerate(zip(users, u)):
            s = self.seqs[ui]
            n = len(s.items)
            end = 2 + int(r * (n - 1))  # window end (exclusive) in [2, n]
            start = max(0, end - T - 1)
            L = end - start - 1  # inputs are [start, end-1), targets shifted by one
            sl, tl = slice(start, end - 1), slice(start + 1, end)
            out["items"][b, T - L :] = s.items[sl]
            out["types"][b, T - L :] = s.types[sl]
            out["gaps"][b, T - L :] = s.gaps[sl]
            out["next_item"][b, T - L :] = s.items[tl]
            out["next_type"][b, T - L :] = s.types[tl]
            out["conv"][b, T - L :] = s.conv[sl]
        return {k: torch.from_numpy(v) for k, v in out.items()}


def encode(histories: list[list[Event]], vocab: ItemVocab, max_len: int) -> dict[str, torch.Tensor]:
    """Left-padded (B, T) item / type / gap ids of the last ``max_len`` events of each history.

    Raises:
        ValueError: an empty history (the caller falls back to popularity and says so).
    """
    T = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = {k: np.zeros((len(histories), T), dtype=np.int64) for k in ("items", "types", "gaps")}
    for b, h in enumerate(histories):
        if not h:
            raise ValueError(f"history {b} is empty; the model needs at least one event")
        items, types, gaps = tokenize(h[-max_len:] if len(h) <= max_len else h[-max_len - 1 :], vocab)
        if len(h) > max_len:  # tokenized one extra event so the first kept one has its real gap
            items, types, gaps = items[1:], types[1:], gaps[1:]
        L = len(items)
        out["items"][b, T - L :] = items
        out["types"][b, T - L :] = types
        out["gaps"][b, T - L :] = gaps
    return {k: torch.from_numpy(v) for k, v in out.items()}
