"""Ranking metrics on hand-computed examples, and the BEIR evaluation loop with its failure report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nanoforge.retriever.evaluate import evaluate_collection, write_report
from nanoforge.retriever.metrics import evaluate_run, mrr_at_k, ndcg_at_k, recall_at_k


def test_recall_by_hand() -> None:
    rel = {"a": 1, "b": 1, "c": 1}
    assert recall_at_k(["a", "x", "b"], rel, 1) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "x", "b"], rel, 3) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "a", "b"], rel, 2) == pytest.approx(2 / 3)  # duplicates count once
    assert recall_at_k(["x"], {}, 10) == 0.0


def test_mrr_by_hand() -> None:
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0
    assert mrr_at_k(["a"], {"a": 0}, 10) == 0.0  # grade 0 is not relevant


def test_ndcg_by_hand() -> None:
    # Relevant a (grade 2) at rank 2 and b (grade 1) at rank 3; ideal order is a, b.
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["x", "a", "b"], {"a": 2, "b": 1}, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "b"], {"a": 2, "b": 1}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], {"a": 1}, 10) == 0.0
    assert ndcg_at_k(["x", "a"], {"a": 1}, 1) == 0.0


def test_evaluate_run_means_over_judged_queries() -> None:
    run = {"q1": ["a", "b"], "q2": ["z"]}
    qrels = {"q1": {"a": 1}, "q2": {"y": 1}, "q3": {"w": 1}}  # q3 has no run: counts as all zeros
    m = evaluate_run(run, qrels)
    assert m["recall@1"] == pytest.approx(1 / 3) and m["mrr@10"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no query has a relevant document"):
        evaluate_run(run, {"q1": {"a": 0}})


def test_evaluate_collection_and_report(make_collection, corpus, tmp_path: Path) -> None:
    col = make_collection()
    col.upsert(corpus)
    queries = {"q1": "cat purrs mice", "q2": "embedded SQL database WAL", "q3": "volcano eruption lava"}
    qrels = {"q1": {"cats": 1}, "q2": {"sqlite": 1}, "q3": {"gone": 1}}  # q3's relevant doc is not indexed
    res = evaluate_collection(col, queries, qrels, mode="hybrid")
    assert res.num_queries == 3
    assert res.metrics["recall@1"] == pytest.approx(2 / 3)
    assert res.metrics["mrr@10"] == pytest.approx(2 / 3)
    [failure] = res.failures
    assert failure["query_id"] == "q3" and failure["first_relevant_rank"] is None
    assert len(failure["retrieved_top3"]) == 3
    assert res.latency_ms["p50"] > 0
    md = write_report(col, [res], tmp_path / "report")
    text = md.read_text()
    assert "| hybrid |" in text and "ndcg@10" in text
    assert "**q3** volcano eruption lava" in text and "`gone` (not in collection)" in text
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["hybrid"]["metrics"]["recall@1"] == pytest.approx(2 / 3)
