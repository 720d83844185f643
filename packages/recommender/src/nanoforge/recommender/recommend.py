"""Top-k recommendation for one user history, with the fallbacks a service needs.

What it does: ``recommend`` encodes the history once, ranks the known items (optionally excluding those
already in the history), returns ``{"items", "scores", "conversion", "source"}``; unknown items in the history
map to hashed buckets (they still inform the model, they are never recommended); an empty history falls
back to popularity (the vocabulary is ordered by training frequency) and says so in ``source``.
What it does not do: serve over gRPC (``service``, on ``scoring.ServedModel``) or filter by business rules.
"""

from __future__ import annotations

from typing import Any

import torch

from nanoforge.recommender.evaluate import ModelScorer
from nanoforge.recommender.events import Event
from nanoforge.recommender.model import SeqRec
from nanoforge.recommender.vocab import ItemVocab


def recommend(
    model: SeqRec, vocab: ItemVocab, history: list[Event], *, k: int = 10, exclude_seen: bool = True
) -> dict[str, Any]:
    """Top-``k`` known items for ``history`` (time-ordered events of one user)."""
    if k <= 0:
        raise ValueError(f"k={k!r} must be a positive int")
    seen = {e.item for e in history} if exclude_seen else set()
    if not history:
        items = [it for it in vocab.items if it not in seen][:k]
        return {
            "items": items,
            "scores": [None] * len(items),
            "conversion": None,
            "source": "popularity (empty history)",
        }
    scorer = ModelScorer(model, vocab)
    with torch.no_grad():
        h = scorer.hidden_last([history])
        scores = model.item_logits(h)[0, vocab.first_item_id :]  # known items only
        conv = float(torch.sigmoid(model.conversion_logit(h))[0])
    for it in seen:
        if vocab.is_known(it):
            scores[vocab.id(it) - vocab.first_item_id] = float("-inf")
    top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))
    return {
        "items": [vocab.items[int(i)] for i in top.indices],
        "scores": [round(float(s), 4) for s in top.values],
        "conversion": round(conv, 4),
        "source": "model",
    }
