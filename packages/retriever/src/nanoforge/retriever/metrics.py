"""Ranking metrics over document ids, as BEIR / pytrec_eval define them.

- ``recall_at_k``: relevant documents in the top k / all relevant documents.
- ``mrr_at_k``: 1 / rank of the first relevant document in the top k (0 if none).
- ``ndcg_at_k``: DCG with gain ``grade`` and discount ``1 / log2(rank + 1)``, divided by the DCG of the ideal
  ordering of the judged documents (BEIR's graded, linear-gain nDCG).

Every function takes a ranked list of ids (best first, duplicates ignored after the first) and
``{doc_id: grade}`` with positive grades for the relevant documents.

What it deliberately does not do: statistical significance tests, or judged-only variants (bpref).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def _dedup(ranked: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for d in ranked:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """``recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 2)`` -> 1/3."""
    rel = {d for d, g in relevant.items() if g > 0}
    if not rel:
        return 0.0
    return len(rel.intersection(_dedup(ranked)[:k])) / len(rel)


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """``mrr_at_k(["x", "a"], {"a": 1}, 10)`` -> 0.5."""
    for rank, d in enumerate(_dedup(ranked)[:k], start=1):
        if relevant.get(d, 0) > 0:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """``ndcg_at_k(["x", "a"], {"a": 1}, 10)`` -> (1/log2(3)) / (1/log2(2)) = 0.6309."""
    dcg = sum(relevant.get(d, 0) / math.log2(rank + 1) for rank, d in enumerate(_dedup(ranked)[:k], start=1))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


#: Metric name -> (function, k); the set ``nanoforge retriever eval`` reports.
METRICS = {
    "recall@1": (recall_at_k, 1),
    "recall@5": (recall_at_k, 5),
    "recall@10": (recall_at_k, 10),
    "recall@100": (recall_at_k, 100),
    "mrr@10": (mrr_at_k, 10),
    "ndcg@10": (ndcg_at_k, 10),
}


def evaluate_run(
    run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """Mean of every metric in ``METRICS`` over the queries that have qrels (a missing run counts as 0)."""
    qids = [q for q in qrels if any(g > 0 for g in qrels[q].values())]
    if not qids:
        raise ValueError("no query has a relevant document in the qrels")
    return {
        name: sum(fn(run.get(q, []), qrels[q], k) for q in qids) / len(qids)
        for name, (fn, k) in METRICS.items()
    }
