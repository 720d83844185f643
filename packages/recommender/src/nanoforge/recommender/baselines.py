"""Baselines scored exactly like the model: most-popular, item-to-item co-occurrence kNN, last-item transitions.

What it does: each baseline is fitted on the TRAINING sequences only and is a ``Scorer``: a callable
``histories -> (B, vocab.size) float scores`` over item ids (padding and bucket columns are never
candidates; ``evaluate`` ignores them). ``BASELINES`` maps a name to its builder.

    popular     score(i) = training count of i (same list for everyone)
    item_knn    score(i) = sum over the items j in the history of cos(i, j), where cos is the cosine of the
                binary user x item matrix's columns (item-based CF, Sarwar et al. 2001); the last
                ``window`` history items are used (0 = all)
    transition  score(i) = count(last item -> i) in training + 1e-3 * popularity (a first-order Markov chain;
                the tie-break keeps it from ranking arbitrary items when the last item is rare)

What it does not do: learn anything beyond counts. The kNN similarity matrix is dense (V x V floats),
fine for MovieLens-sized catalogues (1.7k items -> 11 MB), not for millions of items.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from nanoforge.recommender.events import Event
from nanoforge.recommender.vocab import ItemVocab


class Scorer(Protocol):
    def __call__(self, histories: list[list[Event]]) -> np.ndarray: ...


def _ids(events: list[Event], vocab: ItemVocab) -> np.ndarray:
    return np.fromiter((vocab.id(e.item) for e in events), dtype=np.int64, count=len(events))


class Popular:
    """Most-popular items by training count."""

    def __init__(self, train: dict[str, list[Event]], vocab: ItemVocab) -> None:
        self.counts = np.zeros(vocab.size, dtype=np.float64)
        for seq in train.values():
            np.add.at(self.counts, _ids(seq, vocab), 1.0)

    def __call__(self, histories: list[list[Event]]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), len(self.counts))).copy()


class ItemKNN:
    """Item-based collaborative filtering with cosine similarity of co-occurrence."""

    def __init__(self, train: dict[str, list[Event]], vocab: ItemVocab, window: int = 0) -> None:
        self.vocab, self.window = vocab, window
        V = vocab.size
        users = [np.unique(_ids(seq, vocab)) for seq in train.values() if seq]
        X = np.zeros((len(users), V), dtype=np.float32)  # (U, V) binary interactions
        for u, ids in enumerate(users):
            X[u, ids] = 1.0
        co = X.T @ X  # (V, V) co-occurrence counts
        norm = np.sqrt(np.diag(co)).astype(np.float32)
        norm[norm == 0] = 1.0
        self.sim = co / norm[:, None] / norm[None, :]
        np.fill_diagonal(self.sim, 0.0)

    def __call__(self, histories: list[list[Event]]) -> np.ndarray:
        out = np.zeros((len(histories), self.vocab.size), dtype=np.float64)
        for b, h in enumerate(histories):
            ids = np.unique(_ids(h[-self.window :] if self.window else h, self.vocab))
            out[b] = self.sim[ids].sum(0)
        return out


class Transition:
    """First-order Markov chain: counts of (item -> next item) in training, popularity as tie-break."""

    def __init__(self, train: dict[str, list[Event]], vocab: ItemVocab) -> None:
        V = vocab.size
        self.vocab = vocab
        self.counts = np.zeros((V, V), dtype=np.float32)
        pop = np.zeros(V, dtype=np.float64)
        for seq in train.values():
            ids = _ids(seq, vocab)
            np.add.at(self.counts, (ids[:-1], ids[1:]), 1.0)
            np.add.at(pop, ids, 1.0)
        self.prior = 1e-3 * pop / max(1.0, pop.max())

    def __call__(self, histories: list[list[Event]]) -> np.ndarray:
        last = np.array([self.vocab.id(h[-1].item) if h else 0 for h in histories])
        return self.counts[last].astype(np.float64) + self.prior[None, :]


BASELINES: dict[str, Callable[[dict[str, list[Event]], ItemVocab], Scorer]] = {
    "popular": Popular,
    "item_knn": ItemKNN,
    "transition": Transition,
}
