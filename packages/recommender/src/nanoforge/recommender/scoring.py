"""One user history, encoded once, answers every question the RecommenderService asks of a trained model.

What it does: ``ServedModel`` wraps a trained ``SeqRec``, its ``ItemVocab`` and the horizon its conversion
head was trained for. ``encode(history)`` runs ONE forward pass and keeps, for the last event:

    item_logprobs  log-softmax over every non-padding id (hashed buckets + known items), as in training
    type_probs     the next-event-type distribution (view / click / cart / purchase)
    conversion     P(a purchase within the trained horizon) from the conversion head

Everything else reads that ``Encoded``: ``top_k`` (recommend: allow-list, exclusions, seen items),
``logprob`` (any item; an unknown item gets its hashed bucket's value: the model reads it as an unseen
item, it never fails), ``conversion_probability`` (horizon 1 from the type head, the trained horizon from
the conversion head), and ``attributions``, which explains one item by LEAVE-ONE-OUT occlusion: each event
is removed in turn (the rest keep their times, so the next event's time gap grows) and the weight is
``log P(item | history) - log P(item | history without that event)``, all variants run as one batch.
An empty history is answered from training popularity (``popularity_logprobs``); callers say so.

What it does not do: gRPC (``service``), text generation, or conditioning the item head on an event type
(``event_type`` filters multiply by P(type): same ranking, honest joint probability under independence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nanoforge.recommender.dataset import encode
from nanoforge.recommender.events import EVENT_TYPES, Event, event_type_id
from nanoforge.recommender.model import SeqRec
from nanoforge.recommender.train import load_rec_horizon, load_rec_model
from nanoforge.recommender.vocab import ItemVocab

CONVERSION_EVENT = "purchase"  # what the conversion head was trained on (dataset.conversion_labels)


@dataclass
class Encoded:
    """The model's answers after the last event of one history (all on CPU)."""

    item_logprobs: torch.Tensor  # (V,) log P(next item id); -inf at padding
    type_probs: torch.Tensor  # (n_types,) P(next event type id); 0 at padding
    conversion: float  # P(purchase within the trained horizon)
    n_events: int  # events the model read (the window)
    unknown: list[str]  # history items outside the vocabulary, in order (hashed buckets)


class ServedModel:
    """A trained sequence model ready to answer requests. ``name`` is what clients ask for."""

    def __init__(self, model: SeqRec, vocab: ItemVocab, *, name: str, horizon: int | None) -> None:
        self.model, self.vocab, self.name, self.horizon = model.eval(), vocab, name, horizon
        self.max_len = model.rec.max_len

    @classmethod
    def load(cls, directory: str | Path, name: str | None = None) -> ServedModel:
        """Load a run dir or model dir (``train.load_rec_model``); the name defaults to the dir's name."""
        model, vocab = load_rec_model(directory)
        return cls(
            model, vocab, name=name or Path(directory).resolve().name, horizon=load_rec_horizon(directory)
        )

    # ------------------------------------------------------------------------------------ encoding
    @torch.no_grad()
    def _hidden(self, histories: list[list[Event]]) -> torch.Tensor:
        x = encode(histories, self.vocab, self.max_len)  # (B, T) each
        return self.model(x["items"], x["types"], x["gaps"])[:, -1]  # (B, C) after the last event

    def _item_logprobs(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.model.item_logits(h)  # (B, V)
        logits[:, 0] = float("-inf")  # padding is never an item
        return torch.log_softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def encode(self, history: list[Event]) -> Encoded:
        """One forward pass over the last ``max_len`` events of a non-empty, time-ordered history."""
        if not history:
            raise ValueError("history is empty; the model needs at least one event")
        h = self._hidden([history])
        type_logits = self.model.type_logits(h)[0].float()
        type_logits[0] = float("-inf")
        return Encoded(
            item_logprobs=self._item_logprobs(h)[0],
            type_probs=torch.softmax(type_logits, dim=-1),
            conversion=float(torch.sigmoid(self.model.conversion_logit(h))[0]),
            n_events=min(len(history), self.max_len),
            unknown=[e.item for e in history if not self.vocab.is_known(e.item)],
        )

    def popularity_logprobs(self) -> torch.Tensor:
        """(V,) log share of training events per known item (-inf elsewhere); uniform without counts."""
        v = self.vocab
        out = torch.full((v.size,), float("-inf"))
        counts = torch.tensor(v.counts or [1] * len(v.items), dtype=torch.float64)
        out[v.first_item_id :] = torch.log(counts / counts.sum()).float()
        return out

    # ------------------------------------------------------------------------------------- answers
    def type_logprob(self, enc: Encoded, event_type: str) -> float:
        """log P(next event type); 0.0 for "" (any type). Raises ValueError on an unknown type."""
        if not event_type:
            return 0.0
        p = float(enc.type_probs[event_type_id(event_type)])
        return math.log(p) if p > 0 else float("-inf")

    def logprob(self, logprobs: torch.Tensor, item: str) -> float:
        """log P(item) under ``logprobs`` (V,); an unknown item gets its hashed bucket's value."""
        return float(logprobs[self.vocab.id(item)])

    def top_k(
        self,
        logprobs: torch.Tensor,
        k: int,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        seen: Sequence[Event] = (),
    ) -> list[tuple[str, float]]:
        """The best ``k`` KNOWN items as (item, logprob), best first; ties by vocabulary order (popularity).

        ``include`` (non-empty) is an allow-list, ``exclude`` and the items of ``seen`` are removed; unknown
        items in any of them are ignored (they can never be recommended). Fewer than ``k`` when few remain.
        """
        v = self.vocab
        scores = logprobs[v.first_item_id :].clone()  # (n_known,) known items only
        if include:
            allowed = torch.zeros_like(scores, dtype=torch.bool)
            allowed[[v.id(it) - v.first_item_id for it in include if v.is_known(it)]] = True
            scores[~allowed] = float("-inf")
        removed = [v.id(it) - v.first_item_id for it in [*exclude, *(e.item for e in seen)] if v.is_known(it)]
        scores[removed] = float("-inf")
        n = min(k, int(torch.isfinite(scores).sum()))
        values, order = torch.sort(scores, descending=True, stable=True)  # stable: ties keep vocab order
        return [(v.items[int(i)], float(x)) for i, x in zip(order[:n], values[:n])]

    def conversion_probability(
        self, enc: Encoded, horizon: int, event_type: str, item: str
    ) -> tuple[float, str]:
        """P(an ``event_type`` event, on ``item`` if given, within ``horizon`` events) and the head used.

        Horizon 1 reads the next-type head (times P(item) when an item is given: the heads are
        independent). The trained horizon reads the conversion head (purchases of any item only).

        Raises:
            ValueError: another horizon, or a type / item the conversion head cannot answer.
        """
        kind = event_type or CONVERSION_EVENT
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown conversion_event_type {kind!r}; accepted: {', '.join(EVENT_TYPES)}")
        if horizon == self.horizon and kind == CONVERSION_EVENT and not item:
            return enc.conversion, "conversion_head"
        if horizon == 1:
            p = float(enc.type_probs[event_type_id(kind)])
            if item:
                p *= math.exp(self.logprob(enc.item_logprobs, item))
            return p, "next_type_head"
        accepted = "1" if self.horizon is None else f"1 or {self.horizon}"
        if horizon == self.horizon:
            raise ValueError(
                f"horizon_events={horizon} is answered by the conversion head, which predicts a purchase of "
                f"any item; got conversion_event_type={kind!r} item_id={item!r} (use horizon_events=1 for those)"
            )
        raise ValueError(
            f"horizon_events={horizon} is not answered by model {self.name!r}; accepted: {accepted}"
        )

    @torch.no_grad()
    def attributions(self, history: list[Event], item: str) -> tuple[float, list[float]]:
        """(log P(item | history), per-event leave-one-out weights, one per history event).

        Events older than the model's window (and the one just before it, whose time sets the first
        gap) never reach the model: their weight is exactly 0. Removing the only event leaves an empty
        history, which the service answers by popularity, so that is the reference then.
        """
        enc = self.encode(history)
        full = self.logprob(enc.item_logprobs, item)
        n = len(history)
        start = max(0, n - self.max_len - 1)
        weights = [0.0] * n
        if n == 1:
            weights[0] = full - self.logprob(self.popularity_logprobs(), item)
            return full, weights
        variants = [history[:i] + history[i + 1 :] for i in range(start, n)]  # each: one event removed
        target = self.vocab.id(item)
        for s in range(0, len(variants), 64):
            lp = self._item_logprobs(self._hidden(variants[s : s + 64]))[:, target]  # (b,)
            for j, value in enumerate(lp.tolist()):
                weights[start + s + j] = full - value
        return full, weights
