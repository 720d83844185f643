"""Okapi BM25 over chunk texts: analyzer, inverted index in numpy arrays, top-k with an optional id filter.

Score of document d for query q (Robertson / Lucene variant, idf never negative)::

    idf(t)   = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(d) = sum_{t in q} idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))

The analyzer lower-cases, splits on letters/digits, drops English stop words and applies a light suffix
stemmer (plural and -ing/-ed/-ly style endings), which is what search engines' English analyzers roughly do.

Incremental use: ``add``/``remove`` keep per-document term counts; the postings (term -> doc rows, term
frequencies) are rebuilt lazily on the next search after a change, in O(total tokens) without re-analysing
any text. The index is not persisted: a ``Collection`` rebuilds it from its SQLite chunk table on open, so
it can never disagree with the stored chunks.

What it deliberately does not do: phrase queries, fielded search, or language detection.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
import regex

_WORD = regex.compile(r"[\p{L}\p{N}]+")

#: A short English stop-word list (the usual Lucene/NLTK core).
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
        "we",
        "you",
        "your",
        "i",
        "he",
        "she",
        "his",
        "her",
        "its",
        "our",
        "from",
        "have",
        "has",
        "had",
        "were",
        "been",
        "being",
        "do",
        "does",
        "did",
        "so",
        "than",
        "too",
        "very",
        "can",
        "could",
        "would",
        "should",
        "may",
        "might",
        "must",
        "which",
        "who",
        "whom",
        "what",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "only",
        "own",
        "same",
        "just",
        "also",
        "about",
        "above",
        "below",
        "between",
        "over",
        "under",
        "again",
    ]
)

_SUFFIXES = ("ational", "ization", "fulness", "iveness", "ations", "ation", "ments", "ment", "ings", "ing",
             "edly", "ies", "ied", "ness", "ly", "ed", "es", "s")  # fmt: skip


def stem(word: str) -> str:
    """Strip one common English suffix, keeping a stem of >= 3 letters: ``"proteins"`` -> ``"protein"``."""
    if len(word) <= 3 or word.isdigit():
        return word
    for suf in _SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            base = word[: -len(suf)]
            if suf in ("ies", "ied"):
                return base + "y"
            if suf == "s" and word.endswith("ss"):
                return word
            return base
    return word


def analyze(text: str) -> list[str]:
    """Text -> index terms: ``"The cells were dividing"`` -> ``["cell", "divid"]``."""
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


class BM25Index:
    """In-memory BM25 keyed by int64 ids."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._docs: dict[int, Counter[str]] = {}
        self._dirty = True
        self._ids = np.zeros(0, dtype=np.int64)
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._norm = np.zeros(0, dtype=np.float32)

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, items: Iterable[tuple[int, str]]) -> None:
        """Index (id, text) pairs; an existing id is replaced."""
        for doc_id, text in items:
            self._docs[int(doc_id)] = Counter(analyze(text))
        self._dirty = True

    def remove(self, ids: Iterable[int]) -> None:
        """Forget ids (unknown ids are ignored)."""
        for doc_id in ids:
            self._docs.pop(int(doc_id), None)
        self._dirty = True

    def _build(self) -> None:
        self._ids = np.fromiter(self._docs.keys(), dtype=np.int64, count=len(self._docs))
        lengths = np.fromiter(
            (sum(c.values()) for c in self._docs.values()), dtype=np.float32, count=len(self._docs)
        )
        avgdl = float(lengths.mean()) if len(lengths) else 1.0
        # Per-document length normalisation, precomputed: k1 * (1 - b + b * |d| / avgdl).
        self._norm = self.k1 * (1.0 - self.b + self.b * lengths / max(avgdl, 1e-9))
        rows: dict[str, list[int]] = {}
        tfs: dict[str, list[int]] = {}
        for row, counts in enumerate(self._docs.values()):
            for term, tf in counts.items():
                rows.setdefault(term, []).append(row)
                tfs.setdefault(term, []).append(tf)
        self._postings = {
            t: (np.asarray(rows[t], dtype=np.int64), np.asarray(tfs[t], dtype=np.float32)) for t in rows
        }
        self._dirty = False

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every indexed document (row order of ``ids()``), shape (N,)."""
        if self._dirty:
            self._build()
        n = len(self._ids)
        out = np.zeros(n, dtype=np.float32)
        for term, qtf in Counter(analyze(query)).items():
            post = self._postings.get(term)
            if post is None:
                continue
            rows, tf = post
            idf = math.log(1.0 + (n - len(rows) + 0.5) / (len(rows) + 0.5))
            out[rows] += qtf * idf * tf * (self.k1 + 1.0) / (tf + self._norm[rows])
        return out

    def ids(self) -> np.ndarray:
        """Indexed ids in row order."""
        if self._dirty:
            self._build()
        return self._ids

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Top-``k`` (id, score) pairs with a positive score, best first.

        Args:
            query: query text.
            k: number of results.
            allowed: when given, only these ids may be returned.
        """
        scores = self.scores(query)
        if allowed is not None:
            mask = np.isin(self._ids, allowed)
            scores = np.where(mask, scores, 0.0)
        k = min(k, int(np.count_nonzero(scores > 0)))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self._ids[i]), float(scores[i])) for i in top]
