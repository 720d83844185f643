"""Retriever benchmark: dense search through the gRPC RetrieverService vs FAISS called in-process, and ingest.

    .venv/bin/python tools/bench/retriever.py                  # 100k x 384 random unit vectors
    .venv/bin/python tools/bench/retriever.py --n 20000 --queries 500   # quicker

Setup: N random unit vectors (dimension 384, the MiniLM size) in one collection with a FAISS flat
inner-product index, and Q random unit query vectors. To measure the index path and not an embedding
model, the collection's embedder is a lookup table: the text ``"v:<i>"`` embeds to vector i (the same
vectors the in-process side searches), so both sides do the same FAISS work.

Measured in one run, side by side:

- in-process FAISS (``IndexFlatIP.search`` on the same vectors): one query per call (single), and
  ``--batch`` queries per call (batched);
- the service (``Search`` RPC, dense mode, top 10, loopback, one client): sequential calls (single), and
  ``--concurrency`` calls in flight at once (batched), which the service's micro-batcher merges into one
  FAISS call per batch. The service also looks up each hit's document in SQLite and builds the reply;
- our library without gRPC (``Collection.search_many``), to split the cost between gRPC and the library;
- ingestion: chunks per second through ``Collection.upsert`` (lookup embedder, so it measures chunking,
  SQLite and FAISS writes) and through the ``Upsert`` RPC;
- BM25: our ``BM25Index`` vs bm25s (index build time, one-query-per-call throughput at top 100) on SciFact
  (``../shared/data/scifact``, read in place) or, when absent, a synthetic Zipf corpus.

Reports QPS, p50/p99 latency (per call) and the ratio service / in-process FAISS. OpenMP threads default to
1 (``--threads``): on a shared 2-core machine, 2 OpenMP threads make one-query FAISS calls ~7x slower
(spinning barriers under contention), which would flatter the service.
What it does not do: measure embedding models (see tools/experiments/retrieval.py for MiniLM timings).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class LookupEmbedder:
    """``"v:<i>"`` -> row i of a fixed matrix; anything else -> a deterministic random unit vector."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    @property
    def key(self) -> str:
        return "lookup"

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = [int(t.rsplit(":", 1)[1]) if t.startswith(("v:", "q:")) else 0 for t in texts]
        return self.table[rows]


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _stats(lat_s: list[float], n_queries: int, wall: float) -> dict[str, float]:
    arr = np.asarray(lat_s) * 1000
    return {
        "qps": n_queries / wall,
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32, help="queries per in-process batched FAISS call")
    ap.add_argument("--concurrency", type=int, default=32, help="service calls in flight for 'batched'")
    ap.add_argument("--bm25-data", default=str(Path(__file__).resolve().parents[3] / "shared/data/scifact"),
                    help="BEIR dir for the BM25 comparison (synthetic corpus when absent)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads for FAISS (both sides)")
    args = ap.parse_args()
    # Before FAISS loads: OpenMP reads it once, and it then applies to every thread, the service's too.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import faiss

    from nanoforge.api.client import make_channel, make_sync_channel
    from nanoforge.api.retriever.v1 import retriever_pb2 as pb
    from nanoforge.api.retriever.v1 import retriever_pb2_grpc as pb_grpc
    from nanoforge.retriever.chunking import ChunkerSpec
    from nanoforge.retriever.dense import IndexSpec
    from nanoforge.retriever.documents import Document
    from nanoforge.retriever.embedders import EmbedderSpec
    from nanoforge.retriever.library import Library
    from nanoforge.retriever.service import start_server

    base = _unit(args.n, args.dim, 0)
    queries = _unit(args.queries, args.dim, 1)
    table = np.concatenate([base, queries])  # "v:i" -> base[i]; "q:j" is "v:(n + j)"
    qtexts = [f"v:{args.n + j}" for j in range(args.queries)]
    k = 10
    rows: list[tuple[str, dict[str, float]]] = []

    # --- in-process FAISS --------------------------------------------------------------------------
    index = faiss.IndexFlatIP(args.dim)
    index.add(base)
    lat = []
    t0 = time.perf_counter()
    for j in range(args.queries):
        t = time.perf_counter()
        index.search(queries[j : j + 1], k)
        lat.append(time.perf_counter() - t)
    rows.append(("FAISS in-process, single", _stats(lat, args.queries, time.perf_counter() - t0)))
    lat = []
    t0 = time.perf_counter()
    for j in range(0, args.queries, args.batch):
        t = time.perf_counter()
        index.search(queries[j : j + args.batch], k)
        lat.append(time.perf_counter() - t)
    rows.append(
        (
            f"FAISS in-process, batched ({args.batch}/call)",
            _stats(lat, args.queries, time.perf_counter() - t0),
        )
    )

    with tempfile.TemporaryDirectory(prefix="nf-bench-retriever-") as tmp:
        lib = Library(Path(tmp), embedder_factory=lambda spec: LookupEmbedder(table))
        col = lib.create("bench", EmbedderSpec("hash"), ChunkerSpec("fixed", 8, 0), IndexSpec("flat"))

        # --- ingestion through the library ---------------------------------------------------------
        docs = [Document(f"d{i}", f"v:{i}") for i in range(args.n)]
        t0 = time.perf_counter()
        for i in range(0, args.n, 10_000):
            col.upsert(docs[i : i + 10_000])
        ingest_lib = args.n / (time.perf_counter() - t0)

        # --- library without gRPC --------------------------------------------------------------------
        lat = []
        t0 = time.perf_counter()
        for j in range(args.queries):
            t = time.perf_counter()
            col.search(qtexts[j], mode="dense", k=k)
            lat.append(time.perf_counter() - t)
        rows.append(
            ("library Collection.search, single", _stats(lat, args.queries, time.perf_counter() - t0))
        )
        lat = []
        t0 = time.perf_counter()
        for j in range(0, args.queries, args.batch):
            t = time.perf_counter()
            col.search_many(qtexts[j : j + args.batch], mode="dense", k=k)
            lat.append(time.perf_counter() - t)
        rows.append(
            (f"library search_many ({args.batch}/call)", _stats(lat, args.queries, time.perf_counter() - t0))
        )

        # --- the service ---------------------------------------------------------------------------
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        running = asyncio.run_coroutine_threadsafe(
            start_server(lib, EmbedderSpec("hash"), port=0), loop
        ).result()
        target = f"127.0.0.1:{running.port}"
        opts = pb.SearchOptions(mode=pb.SEARCH_MODE_DENSE, top_k=k)
        with make_sync_channel(target) as channel:
            stub = pb_grpc.RetrieverServiceStub(channel)
            reply = stub.Search(pb.SearchRequest(collection="bench", query=qtexts[0], options=opts))
            expect = index.search(queries[:1], k)[1][0]
            assert [h.document_id for h in reply.hits] == [f"d{i}" for i in expect], (
                "service and FAISS disagree"
            )
            lat = []
            t0 = time.perf_counter()
            for j in range(args.queries):
                t = time.perf_counter()
                stub.Search(pb.SearchRequest(collection="bench", query=qtexts[j], options=opts))
                lat.append(time.perf_counter() - t)
            rows.append(("service Search RPC, single", _stats(lat, args.queries, time.perf_counter() - t0)))

        async def concurrent() -> tuple[list[float], float]:
            async with make_channel(target) as ch:
                st = pb_grpc.RetrieverServiceStub(ch)
                sem = asyncio.Semaphore(args.concurrency)
                lat: list[float] = []

                async def one(q: str) -> None:
                    async with sem:
                        t = time.perf_counter()
                        await st.Search(pb.SearchRequest(collection="bench", query=q, options=opts))
                        lat.append(time.perf_counter() - t)

                t0 = time.perf_counter()
                await asyncio.gather(*(one(q) for q in qtexts))
                return lat, time.perf_counter() - t0

        batches_before = running.servicer.batcher.batches
        lat, wall = asyncio.run(concurrent())
        n_batches = running.servicer.batcher.batches - batches_before
        rows.append((f"service Search RPC, {args.concurrency} in flight", _stats(lat, args.queries, wall)))

        # --- ingestion through the service -----------------------------------------------------------
        n_rpc = min(args.n, 20_000)
        with make_sync_channel(target) as channel:
            stub = pb_grpc.RetrieverServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(name="ingest", embedding_model="hash"))
            t0 = time.perf_counter()
            for i in range(0, n_rpc, 2000):
                batch = [pb.Document(id=f"d{j}", text=f"v:{j}") for j in range(i, min(i + 2000, n_rpc))]
                stub.Upsert(pb.UpsertRequest(collection="ingest", documents=batch))
            ingest_rpc = n_rpc / (time.perf_counter() - t0)
        asyncio.run_coroutine_threadsafe(running.stop(grace=1.0), loop).result()
        loop.call_soon_threadsafe(loop.stop)

    bm25_rows = bench_bm25(Path(args.bm25_data))

    print(f"N={args.n} dim={args.dim} queries={args.queries} k={k} threads={args.threads} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| path | QPS | p50 ms/call | p99 ms/call |")
    print("|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['qps']:.0f} | {s['p50']:.2f} | {s['p99']:.2f} |")
    by = dict(rows)
    single = by["service Search RPC, single"]["qps"] / by["FAISS in-process, single"]["qps"]
    batched = (
        by[f"service Search RPC, {args.concurrency} in flight"]["qps"]
        / by[f"FAISS in-process, batched ({args.batch}/call)"]["qps"]
    )
    print(f"\nservice / in-process FAISS QPS: single {single:.2f}x, batched {batched:.2f}x "
          f"(service merged {args.queries} concurrent calls into {n_batches} FAISS batches)")  # fmt: skip
    print(f"ingestion (lookup embedder, fixed chunker): library {ingest_lib:.0f} chunks/s, "
          f"Upsert RPC {ingest_rpc:.0f} chunks/s")  # fmt: skip
    print("\n| BM25 | index build s | queries/s (top 100) |")
    print("|---|---|---|")
    for name, build_s, qps in bm25_rows:
        print(f"| {name} | {build_s:.2f} | {qps:.0f} |")
    return 0


def bench_bm25(data: Path) -> list[tuple[str, float, float]]:
    """Our BM25 vs bm25s: index build time and query throughput on SciFact (or a synthetic corpus)."""
    import json

    import bm25s

    from nanoforge.retriever.bm25 import BM25Index

    if (data / "corpus.jsonl").is_file():
        with open(data / "corpus.jsonl", encoding="utf-8") as fh:
            docs = [(lambda r: f"{r['title']}\n{r['text']}")(json.loads(line)) for line in fh]
        with open(data / "queries.jsonl", encoding="utf-8") as fh:
            queries = [json.loads(line)["text"] for line in fh][:1000]
        label = f"SciFact, {len(docs)} docs, {len(queries)} queries"
    else:
        rng = np.random.default_rng(0)
        vocab = [f"w{i}" for i in range(20_000)]
        zipf = 1.0 / np.arange(1, len(vocab) + 1)
        zipf /= zipf.sum()
        docs = [" ".join(rng.choice(vocab, size=150, p=zipf)) for _ in range(5000)]
        queries = [" ".join(rng.choice(vocab, size=8, p=zipf)) for _ in range(1000)]
        label = "synthetic Zipf, 5000 docs, 1000 queries"
    out = []
    t0 = time.perf_counter()
    ours = BM25Index()
    ours.add(enumerate(docs))
    ours.ids()  # builds the postings
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in queries:
        ours.search(q, 100)
    out.append((f"nanoforge BM25Index ({label})", build, len(queries) / (time.perf_counter() - t0)))
    t0 = time.perf_counter()
    ref = bm25s.BM25()
    ref.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in queries:  # one query per call, like a server; tokenizing the query is part of the work
        ref.retrieve(bm25s.tokenize([q], stopwords="en", show_progress=False), k=100, show_progress=False)
    out.append((f"bm25s ({label})", build, len(queries) / (time.perf_counter() - t0)))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
