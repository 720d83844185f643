"""Search-time pieces that need no storage: hits, metadata filters, and reciprocal-rank fusion.

Reciprocal rank fusion (Cormack et al., 2009), weighted: a chunk ranked r_d by the dense index and r_b by
BM25 (1-based; absent = not counted) gets ``alpha / (K + r_d) + (1 - alpha) / (K + r_b)`` with K = 60. RRF
uses ranks only, so cosine similarities and BM25 scores, which live on unrelated scales, need no
calibration.

What it deliberately does not do: learned fusion, cross-encoder re-ranking, or query rewriting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

#: The RRF constant of the original paper.
RRF_K = 60


@dataclass(frozen=True)
class Hit:
    """A search result (one chunk, or its parent passage for parent-child collections).

    Attributes:
        chunk_id: ``"<document_id>#<chunk index>"``.
        document_id: the chunk's document.
        text: ``document.text[start:end]``.
        score: ranking score (cosine, BM25 or fused, by mode).
        dense_score: cosine similarity when the dense index returned this chunk, else 0.
        bm25_score: BM25 score when BM25 was consulted, else 0.
        title: document title.
        source: document source.
        metadata: document metadata.
        start: first char offset in the document.
        end: one past the last char.
    """

    chunk_id: str
    document_id: str
    text: str
    score: float
    dense_score: float = 0.0
    bm25_score: float = 0.0
    title: str = ""
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class MetadataFilter:
    """A condition on document metadata; several are combined with AND.

    Attributes:
        key: metadata key.
        op: a key of ``FILTER_OPS``: eq, ne, in, not_in, prefix.
        values: operands (exactly one for eq/ne/prefix, at least one for in/not_in).
    """

    key: str
    op: str
    values: tuple[str, ...]


def _eq(v: str | None, vals: tuple[str, ...]) -> bool:
    return v == vals[0]


def _ne(v: str | None, vals: tuple[str, ...]) -> bool:
    return v != vals[0]


def _in(v: str | None, vals: tuple[str, ...]) -> bool:
    return v in vals


def _not_in(v: str | None, vals: tuple[str, ...]) -> bool:
    return v not in vals


def _prefix(v: str | None, vals: tuple[str, ...]) -> bool:
    return v is not None and v.startswith(vals[0])


#: Operator name -> predicate(value or None when the key is absent, operands).
FILTER_OPS: dict[str, Callable[[str | None, tuple[str, ...]], bool]] = {
    "eq": _eq,
    "ne": _ne,
    "in": _in,
    "not_in": _not_in,
    "prefix": _prefix,
}
_SINGLE = frozenset({"eq", "ne", "prefix"})


def validate_filters(filters: Sequence[MetadataFilter]) -> None:
    """Raise ``ValueError`` for an unknown operator or a wrong number of operands."""
    for f in filters:
        if f.op not in FILTER_OPS:
            raise ValueError(
                f"unknown filter operator {f.op!r} on key {f.key!r}; known: {', '.join(FILTER_OPS)}"
            )
        if not f.key:
            raise ValueError("a metadata filter needs a non-empty key")
        if f.op in _SINGLE and len(f.values) != 1:
            raise ValueError(f"filter {f.op} on {f.key!r} takes exactly one value, got {len(f.values)}")
        if not f.values:
            raise ValueError(f"filter {f.op} on {f.key!r} needs at least one value")


def matches(metadata: Mapping[str, str], filters: Sequence[MetadataFilter]) -> bool:
    """True when ``metadata`` satisfies every filter: ``{"lang": "en"}`` vs eq lang en -> True."""
    return all(FILTER_OPS[f.op](metadata.get(f.key), f.values) for f in filters)


def rrf_fuse(
    dense: Sequence[int], sparse: Sequence[int], alpha: float = 0.5, k: int = RRF_K
) -> list[tuple[int, float]]:
    """Fuse two ranked id lists: ``rrf_fuse([1, 2], [2, 3])`` ranks 2 first (it is in both lists).

    Returns:
        (id, fused score) pairs, best first; ties keep dense order then sparse order.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"hybrid alpha must be in [0, 1], got {alpha}")
    scores: dict[int, float] = {}
    for rank, cid in enumerate(dense, start=1):
        scores[cid] = scores.get(cid, 0.0) + alpha / (k + rank)
    for rank, cid in enumerate(sparse, start=1):
        scores[cid] = scores.get(cid, 0.0) + (1.0 - alpha) / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
