"""Service-backed metrics against a REAL RetrieverService on loopback (hashing embedder): retrieval metrics
from Search against qrels, RAG answers from Ask (extractive mode, no generator needed) scored for
groundedness offline; plus the pure ranking / groundedness functions with hand-computed values."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanoforge.api.client import make_sync_channel
from nanoforge.api.retriever.v1 import retriever_pb2 as pb
from nanoforge.api.retriever.v1 import retriever_pb2_grpc as pb_grpc
from nanoforge.evaluation.backends import build_backend
from nanoforge.evaluation.harness import RunOptions, build_report, relevance, run_system
from nanoforge.evaluation.metrics import (
    faithfulness,
    groundedness,
    hit_rate_at_k,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
)
from nanoforge.evaluation.services import history_events
from nanoforge.evaluation.task import load_task

DOCS = {
    "cats": "Cats purr loudly and hunt mice at night. A kitten sleeps most of the day.",
    "faiss": "FAISS searches dense vectors with HNSW graphs and inverted file lists.",
    "sqlite": "SQLite stores tables in one file. WAL mode lets readers run during a write.",
    "volcano": "Volcanoes erupt molten lava and ash. Magma rises through the crust.",
}


class _Retriever:
    """The real RetrieverService (nanoforge-retriever, a test dependency) on its own loop in a thread."""

    def __init__(self, root: Path) -> None:
        from nanoforge.retriever.embedders import EmbedderSpec
        from nanoforge.retriever.library import Library
        from nanoforge.retriever.service import start_server

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        coro = start_server(Library(root), EmbedderSpec("hash", dim=64), port=0)
        self.running = asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)
        self.target = f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(grace=1.0), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Retriever]:
    srv = _Retriever(tmp_path_factory.mktemp("retriever"))
    channel = make_sync_channel(srv.target)
    stub = pb_grpc.RetrieverServiceStub(channel)
    stub.CreateCollection(pb.CreateCollectionRequest(name="zoo"))
    stub.Upsert(
        pb.UpsertRequest(
            collection="zoo", documents=[pb.Document(id=k, text=v, title=k) for k, v in DOCS.items()]
        )
    )
    channel.close()
    yield srv
    srv.stop()


def _run(task_path: Path, spec: str) -> dict[str, Any]:
    task = load_task(task_path)

    async def go() -> dict[str, Any]:
        backend = build_backend(spec)
        try:
            records = await run_system(task, backend, opts=RunOptions(n_resamples=50))
        finally:
            await backend.aclose()
        return build_report(task, {"svc": (backend, records)}, RunOptions(n_resamples=50))

    return asyncio.run(go())


def test_ranking_functions_by_hand() -> None:
    ranked = ["x", "a", "y", "b"]
    rel = {"a": 1.0, "b": 1.0}
    assert recall_at_k(ranked, rel, 2) == 0.5 and recall_at_k(ranked, rel, 4) == 1.0
    assert reciprocal_rank(ranked, rel) == 0.5 and reciprocal_rank(["x"], rel) == 0.0
    assert hit_rate_at_k(ranked, rel, 1) == 0.0 and hit_rate_at_k(ranked, rel, 2) == 1.0
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert ndcg_at_k(ranked, rel, 4) == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    graded = {"a": 2.0, "b": 1.0}  # gains 3 and 1
    assert ndcg_at_k(["b", "a"], graded, 2) == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    assert math.isnan(recall_at_k(ranked, {}, 2))
    assert relevance(["a", "b"]) == {"a": 1.0, "b": 1.0} and relevance({"a": 2}) == {"a": 2.0}
    with pytest.raises(ValueError, match=r"bad relevant ids 3\.5"):
        relevance(3.5)


def test_groundedness_offline() -> None:
    ctx = ["The Golden Gate Bridge opened in 1937.", "It is painted international orange."]
    assert groundedness("The bridge opened in 1937 [1]. It is painted orange [2].", ctx) == 1.0
    assert groundedness("The bridge opened in 1938 [1]. It is painted orange [2].", ctx) == 0.5  # wrong year
    assert groundedness("Penguins live in Antarctica.", ctx) == 0.0
    assert math.isnan(groundedness("Sure.", ctx))
    assert faithfulness("The bridge opened in 1937 [1].", ctx) == 1.0
    assert 0 < faithfulness("The red bridge opened in 1937 [1].", ctx) < 1
    with pytest.raises(ValueError, match="history\\[1\\]"):
        history_events(["i1", 3.5])


def test_retrieval_metrics_through_search_against_qrels(retriever: _Retriever, write_task: Any) -> None:
    rows = [
        {"q": "kitten purr mice", "relevant": ["cats"]},
        {"q": "HNSW dense vectors", "relevant": {"faiss": 2, "sqlite": 1}},
        {"q": "lava magma erupt", "relevant": ["volcano"]},
        {"q": "kitten purr mice", "relevant": ["not-in-the-collection"]},
    ]
    path = write_task(rows, type="retrieval", template="{{ q }}", metrics=["recall_at_k", "mrr", "ndcg_at_k",
                      "hit_rate_at_k"], service={"collection": "zoo", "mode": "bm25", "top_k": 4, "k": 1})  # fmt: skip
    report = _run(path, f"retriever:{retriever.target}")
    s = report["systems"]["svc"]
    assert s["n_ok"] == 4, [r["error"] for r in s["records"]]
    recs = s["records"]
    # BM25 puts the doc sharing the rare words first; documents, not chunks, are ranked.
    assert [r["retrieved"][0] for r in recs[:3]] == ["cats", "faiss", "volcano"]
    assert all(len(r["retrieved"]) == len(set(r["retrieved"])) for r in recs)
    m = {k: v["value"] for k, v in s["metrics"].items()}
    # query 2 has two relevant docs, only faiss in the top 1 -> recall 1/2; query 4 can never be found.
    assert m["recall_at_k"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert m["hit_rate_at_k"] == pytest.approx(3 / 4)
    rr_last = reciprocal_rank(recs[3]["retrieved"], {"not-in-the-collection": 1})
    assert rr_last == 0.0 and m["mrr"] == pytest.approx(3 / 4)
    assert m["ndcg_at_k"] == pytest.approx((1 + 1 + 1 + 0) / 4)  # top-1 is the highest grade everywhere
    assert s["latency_ms"]["p50"] > 0


def test_rag_answers_through_ask_are_scored_offline(retriever: _Retriever, write_task: Any) -> None:
    rows = [
        {"question": "What do cats hunt at night?", "answer": "mice"},
        {"question": "What does WAL mode let readers do?", "answer": "run during a write"},
    ]
    path = write_task(rows, type="rag", template="{{ question }}", target_field="answer",
                      metrics=["groundedness", "faithfulness", "abstention_rate", "token_f1"],
                      service={"collection": "zoo", "mode": "bm25", "top_k": 2,
                               "options": {"answer_mode": "ANSWER_MODE_EXTRACTIVE"}})  # fmt: skip
    report = _run(path, f"retriever:{retriever.target}")
    s = report["systems"]["svc"]
    assert s["n_ok"] == 2, [r["error"] for r in s["records"]]
    for r in s["records"]:
        assert r["contexts"], r
        if not r["abstained"]:
            # Extractive answers quote their contexts: every sentence is covered by its cited context.
            assert groundedness(r["output"], r["contexts"]) == 1.0, (r["output"], r["contexts"])
    answered = [r for r in s["records"] if not r["abstained"]]
    assert answered, json.dumps(s["records"], indent=1)[:2000]
    assert s["metrics"]["groundedness"]["value"] == 1.0
    assert s["metrics"]["abstention_rate"]["value"] == pytest.approx(1 - len(answered) / 2)


def test_service_tasks_need_the_right_backend_and_keys(server: Any, write_task: Any, tmp_path: Path) -> None:
    path = write_task([{"q": "x", "relevant": ["a"]}], type="retrieval", template="{{ q }}",
                      service={"collection": "zoo"})  # fmt: skip
    report = _run(path, f"grpc:{server.grpc_target}")
    assert report["systems"]["svc"]["records"][0]["error"].startswith(
        "ValueError: a retrieval task needs a backend"
    )
    with pytest.raises(ValueError, match=r"needs service\.collection"):
        load_task(write_task([{"q": "x", "relevant": ["a"]}], type="retrieval", template="{{ q }}"))
    with pytest.raises(ValueError, match="reads 'history' from each record"):
        load_task(write_task([{"u": "x", "target": "a"}], type="ranking", template="{{ u }}"))
    with pytest.raises(ValueError, match=r"bad service\.mode 'fuzzy'; accepted: dense, bm25, hybrid"):
        load_task(write_task([{"q": "x", "relevant": ["a"]}], type="retrieval", template="{{ q }}",
                             service={"collection": "zoo", "mode": "fuzzy"}))  # fmt: skip
    with pytest.raises(ValueError, match="contexts_field 'ctx' is not in the first record"):
        load_task(write_task([{"q": "x"}], template="{{ q }}", contexts_field="ctx"))
