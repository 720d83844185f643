"""Dense FAISS indexes (flat / HNSW / IVF / IVF-PQ), our BM25 (hand-computed and vs bm25s), and RRF."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nanoforge.retriever.bm25 import BM25Index, analyze, stem
from nanoforge.retriever.dense import DenseIndex, IndexSpec
from nanoforge.retriever.search import rrf_fuse


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_dense_add_search_filter_remove_save(kind: str, tmp_path: Path) -> None:
    vecs = _unit(400, 32)
    ids = np.arange(1000, 1400, dtype=np.int64)
    index = DenseIndex(IndexSpec(kind, nlist=4, nprobe=4, pq_m=8), 32)
    index.add(ids, vecs)
    scores, found = index.search(vecs[:5], 1)
    if kind != "ivfpq":  # PQ is lossy: the nearest neighbour of a stored vector is itself for the others
        assert found[:, 0].tolist() == ids[:5].tolist()
        assert np.allclose(scores[:, 0], 1.0, atol=1e-4)
    allowed = ids[200:210]
    _, got = index.search(vecs[:3], 5, allowed=allowed)
    assert set(got.ravel().tolist()) <= set(allowed.tolist())
    index.remove(ids[:2])
    _, got = index.search(vecs[:2], 3)
    assert not set(got.ravel().tolist()) & {1000, 1001}
    index.save(tmp_path / "i.faiss")
    again = DenseIndex.load(index.spec, 32, tmp_path / "i.faiss")
    assert again.ntotal == index.ntotal


def test_hnsw_tombstones_compact_past_a_quarter() -> None:
    vecs = _unit(100, 16, seed=1)
    index = DenseIndex(IndexSpec("hnsw"), 16)
    index.add(np.arange(100, dtype=np.int64), vecs)
    index.remove(range(20))
    assert index.ntotal == 100 and len(index.tombstones) == 20  # HNSW cannot remove: tombstones
    index.remove(range(20, 30))  # 30 > 25% of 100: rebuilt from the live vectors
    assert index.ntotal == 70 and not index.tombstones
    _, got = index.search(vecs[50:51], 1)
    assert got[0, 0] == 50


def test_dense_rejects_wrong_shape_and_kind() -> None:
    with pytest.raises(ValueError, match=r"expected vectors of shape \(N, 8\)"):
        DenseIndex(IndexSpec("flat"), 8).add(np.arange(2), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        DenseIndex(IndexSpec("lsh"), 8)


def test_analyzer_and_stemmer() -> None:
    assert analyze("The cells were dividing quickly") == ["cell", "divid", "quick"]
    assert stem("studies") == "study" and stem("glass") == "glass" and stem("gene") == "gene"


def test_bm25_matches_the_formula_by_hand() -> None:
    index = BM25Index(k1=1.2, b=0.75)
    index.add([(1, "apple banana apple"), (2, "banana cherry"), (3, "cherry durian eggplant fig")])
    # avgdl = (3 + 2 + 4) / 3 = 3; query "apple": df 1, N 3, doc 1 has tf 2 and length 3.
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    expected = idf * 2 * 2.2 / (2 + 1.2 * (1 - 0.75 + 0.75 * 3 / 3))
    hits = index.search("apple", 5)
    assert [h[0] for h in hits] == [1]
    assert hits[0][1] == pytest.approx(expected, rel=1e-6)
    assert next(h[0] for h in index.search("banana cherry", 5)) == 2
    assert index.search("banana", 5, allowed=np.array([2]))[0][0] == 2
    index.remove([2])
    assert [h[0] for h in index.search("banana", 5)] == [1]
    assert index.search("zebra", 5) == []


def test_bm25_ranks_like_bm25s() -> None:
    bm25s = pytest.importorskip("bm25s")
    rng = np.random.default_rng(0)
    vocab = [f"term{i}" for i in range(60)]
    docs = [" ".join(rng.choice(vocab, size=int(rng.integers(5, 30)))) for _ in range(200)]
    ours = BM25Index()
    ours.add(enumerate(docs))
    ref = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    ref.index(bm25s.tokenize(docs, stopwords=None, show_progress=False), show_progress=False)
    for q in ["term1 term2", "term7", "term3 term3 term40 term59"]:
        ref_scores = ref.get_scores(q.split())
        our_scores = ours.scores(q)
        # bm25s's "lucene" method drops Lucene's constant (k1 + 1) numerator factor; otherwise identical.
        assert np.allclose(our_scores, ref_scores * 2.2, rtol=1e-4, atol=1e-5)


def test_rrf_fusion_by_hand() -> None:
    fused = dict(rrf_fuse([1, 2, 3], [3, 4], alpha=0.5, k=60))
    assert fused[3] == pytest.approx(0.5 / 63 + 0.5 / 61)
    assert fused[1] == pytest.approx(0.5 / 61)
    assert next(iter(dict(rrf_fuse([1, 2, 3], [3, 4])))) == 3  # found by both: ranked first
    assert [i for i, _ in rrf_fuse([1, 2], [2, 1], alpha=1.0)] == [1, 2]  # alpha 1: dense order only
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        rrf_fuse([1], [1], alpha=1.5)
