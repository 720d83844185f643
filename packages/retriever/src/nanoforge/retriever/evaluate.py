"""Evaluate a collection on BEIR-style queries and qrels: metrics, latency, and a failure analysis.

``evaluate_collection`` runs every judged query through ``Collection.search`` (query embeddings are computed
in one batch first, so latency measures the index lookups plus fusion; the embedding time is reported
separately), turns chunk hits into a document ranking (a document ranks at its best chunk), and scores it
with ``nanoforge.retriever.metrics``. Queries with no relevant document in the top 10 are listed with what
was retrieved instead. ``write_report`` saves that as Markdown plus the raw numbers as JSON.

What it deliberately does not do: build the collection (``nanoforge retriever index`` does), or tune
anything on the evaluation queries.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nanoforge.retriever.collection import Collection
from nanoforge.retriever.metrics import evaluate_run


@dataclass
class EvalResult:
    """Outcome of one evaluation."""

    mode: str
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    query_embed_ms_per_query: float
    num_queries: int
    failures: list[dict[str, Any]] = field(default_factory=list)


def document_ranking(
    col: Collection, query: str, mode: str, depth: int, qvec: np.ndarray | None
) -> list[str]:
    """Document ids in order of their best chunk, up to ``depth`` documents."""
    hits = col.search(query, mode=mode, k=min(1000, 3 * depth), query_vector=qvec)
    ranking: list[str] = []
    for h in hits:
        if h.document_id not in ranking:
            ranking.append(h.document_id)
    return ranking[:depth]


def evaluate_collection(
    col: Collection,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    mode: str = "hybrid",
    depth: int = 100,
    show_progress: bool = False,
) -> EvalResult:
    """Metrics of ``col`` on the judged ``queries``.

    Raises:
        ValueError: when no judged query has text in ``queries``.
    """
    qids = [q for q in qrels if q in queries]
    if not qids:
        raise ValueError("none of the qrels' query ids appear in the queries file")
    t0 = time.perf_counter()
    qvecs = col.embedder.inner.embed([queries[q] for q in qids]) if mode != "bm25" else None  # (Q, D)
    embed_ms = (time.perf_counter() - t0) * 1000 / len(qids)
    run: dict[str, list[str]] = {}
    lat: list[float] = []
    from nanoforge.cli import progress

    with progress(transient=True, disable=None if show_progress else True) as bar:
        task = bar.add_task(f"eval {mode}", total=len(qids), info="")
        for i, q in enumerate(qids):
            t = time.perf_counter()
            run[q] = document_ranking(
                col, queries[q], mode, depth, None if qvecs is None else qvecs[i : i + 1]
            )
            lat.append((time.perf_counter() - t) * 1000)
            bar.advance(task)
    metrics = evaluate_run(run, {q: qrels[q] for q in qids})
    failures = []
    for q in qids:
        rel = {d for d, g in qrels[q].items() if g > 0}
        if not rel.intersection(run[q][:10]):
            failures.append({
                "query_id": q,
                "query": queries[q],
                "relevant": sorted(rel),
                "first_relevant_rank": next((r for r, d in enumerate(run[q], 1) if d in rel), None),
                "retrieved_top3": run[q][:3],
            })  # fmt: skip
    arr = np.asarray(lat)
    latency = {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "mean": float(arr.mean()),
    }
    return EvalResult(mode, metrics, latency, embed_ms, len(qids), failures)


def _titles(col: Collection, doc_ids: list[str]) -> dict[str, str]:
    out = {}
    for d in doc_ids:
        row = col._db.execute(
            "SELECT title, substr(text, 1, 120) FROM documents WHERE id = ?", (d,)
        ).fetchone()
        out[d] = (row[0] or row[1]) if row else "(not in collection)"
    return out


def write_report(
    col: Collection, results: list[EvalResult], path: str | Path, max_failures: int = 50
) -> Path:
    """Write ``<path>.md`` (tables + failure analysis) and ``<path>.json`` atomically; returns the .md path."""
    base = Path(path)
    lines = [f"# Retrieval evaluation of collection `{col.name}`", ""]
    names = list(results[0].metrics)
    lines += [
        "| mode | " + " | ".join(names) + " | p50 ms | p95 ms | queries |",
        "|---" * (len(names) + 4) + "|",
    ]
    for r in results:
        vals = " | ".join(f"{r.metrics[n]:.4f}" for n in names)
        lines.append(
            f"| {r.mode} | {vals} | {r.latency_ms['p50']:.2f} | {r.latency_ms['p95']:.2f} | {r.num_queries} |"
        )
    for r in results:
        lines += [
            "",
            f"## Failures of `{r.mode}`: {len(r.failures)} queries with no relevant document in the top 10",
            "",
        ]
        for f in r.failures[:max_failures]:
            titles = _titles(col, f["relevant"] + f["retrieved_top3"])
            lines.append(f"- **{f['query_id']}** {f['query']}")
            rank = f["first_relevant_rank"]
            where = f"first at rank {rank}" if rank is not None else "none in the retrieved list"
            lines.append(f"  - relevant ({where}): "
                         + "; ".join(f"`{d}` {titles[d][:80]}" for d in f["relevant"]))  # fmt: skip
            lines.append(
                "  - retrieved instead: " + "; ".join(f"`{d}` {titles[d][:80]}" for d in f["retrieved_top3"])
            )
        if len(r.failures) > max_failures:
            lines.append(f"- ... {len(r.failures) - max_failures} more in the JSON file")
    md = base.with_suffix(".md")
    payload = {r.mode: r.__dict__ for r in results}
    for target, text in (
        (md, "\n".join(lines) + "\n"),
        (base.with_suffix(".json"), json.dumps(payload, indent=1)),
    ):
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    return md
