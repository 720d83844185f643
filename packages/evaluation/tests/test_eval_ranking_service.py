"""Ranking metrics (HR@k, NDCG@k, MRR) through a REAL RecommenderService on loopback, serving a tiny random
sequence model built here: the metrics are computed from the ranked items the service returned."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from nanoforge.evaluation.backends import build_backend
from nanoforge.evaluation.harness import RunOptions, build_report, run_system
from nanoforge.evaluation.task import load_task

ITEMS = tuple(f"i{k}" for k in range(20))


class _Recommender:
    """nanoforge-recommender's service (a test dependency) on its own event loop in a thread."""

    def __init__(self) -> None:
        import torch

        from nanoforge.recommender.model import SeqRec, SeqRecConfig
        from nanoforge.recommender.scoring import ServedModel
        from nanoforge.recommender.service import start_server
        from nanoforge.recommender.vocab import ItemVocab

        torch.manual_seed(0)
        vocab = ItemVocab(ITEMS, n_buckets=2)
        model = SeqRec(
            SeqRecConfig(n_items=vocab.size, d_model=16, n_layer=1, n_head=2, max_len=8, dropout=0.0)
        )
        served = ServedModel(model, vocab, name="tiny", horizon=None)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_server([served], port=0), self.loop)
        self.running = fut.result(timeout=60)
        self.target = f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(grace=1.0), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def recommender() -> Iterator[_Recommender]:
    srv = _Recommender()
    yield srv
    srv.stop()


def _report(path: Any, target: str) -> dict[str, Any]:
    task = load_task(path)

    async def go() -> dict[str, Any]:
        backend = build_backend(f"recommender:{target}", model="tiny")
        try:
            records = await run_system(task, backend, opts=RunOptions(n_resamples=50))
        finally:
            await backend.aclose()
        return build_report(task, {"rec": (backend, records)}, RunOptions(n_resamples=50))

    return asyncio.run(go())


def test_hit_rate_and_ndcg_of_the_held_out_item(recommender: _Recommender, write_task: Any) -> None:
    rows = [
        {"user_id": "u1", "history": ["i1", "i2", "i3"], "next": "i4"},
        {"user_id": "u2", "history": [{"item_id": "i5", "event_type": "click"}, "i6"], "next": "i7"},
        {"user_id": "u3", "history": ["i9"], "next": "i0"},
        {"user_id": "u4", "history": ["i2", "i8"], "next": "never-seen-item"},
    ]
    path = write_task(rows, type="ranking", template="{{ user_id }}", target_field="next",
                      metrics=["hit_rate_at_k", "ndcg_at_k", "mrr"],
                      service={"top_k": len(ITEMS), "k": len(ITEMS), "exclude_seen": True})  # fmt: skip
    s = _report(path, recommender.target)["systems"]["rec"]
    assert s["n_ok"] == 4, [r["error"] for r in s["records"]]
    for row, rec in zip(rows, s["records"], strict=True):
        seen = {h if isinstance(h, str) else h["item_id"] for h in row["history"]}
        assert not seen & set(rec["retrieved"])  # exclude_seen honoured
        assert len(rec["retrieved"]) == len(ITEMS) - len(seen)
    # Every known item is in a full-length list; an item the model never saw cannot be recommended.
    assert s["metrics"]["hit_rate_at_k"]["value"] == pytest.approx(3 / 4)
    ranks = [r["retrieved"].index(row["next"]) + 1 for row, r in zip(rows[:3], s["records"], strict=False)]
    assert s["metrics"]["ndcg_at_k"]["value"] == pytest.approx(sum(1 / math.log2(k + 1) for k in ranks) / 4)
    assert s["metrics"]["mrr"]["value"] == pytest.approx(sum(1 / k for k in ranks) / 4)
