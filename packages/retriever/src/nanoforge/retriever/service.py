"""RetrieverService over gRPC (port 50052): collections, upsert, delete, search, Ask / AskStream, Stats.

The servicer only converts protos to Python and back and calls ``Library`` / ``Collection`` / ``rag``;
errors are exceptions that the shared ``ErrorMappingInterceptor`` (nanoforge.api.server) maps to status
codes: ``ValueError`` -> INVALID_ARGUMENT (empty query, k out of range, oversize or empty document, bad
filter), ``CollectionNotFoundError`` -> NOT_FOUND, ``CollectionExistsError`` -> ALREADY_EXISTS, and
``remote_gen.InferenceError`` -> the InferenceService's own code (UNAVAILABLE when it cannot be reached).
Blocking work (embedding, FAISS, SQLite) runs in worker threads so the event loop keeps serving.

What it deliberately does not do: import the InferenceService (generation goes through
``remote_gen.GrpcGenerator``; embeddings come from the configured embedder, which may be that service).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from nanoforge.api import server as srv
from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.retriever.v1 import retriever_pb2 as pb
from nanoforge.api.retriever.v1 import retriever_pb2_grpc as pb_grpc
from nanoforge.retriever.chunking import ChunkerSpec
from nanoforge.retriever.collection import Collection
from nanoforge.retriever.convert import (
    ask_options,
    ask_usage,
    citations_pb,
    filters_of,
    hit_pb,
    search_options,
    sentences_pb,
    trace_pb,
)
from nanoforge.retriever.dense import IndexSpec
from nanoforge.retriever.documents import Document
from nanoforge.retriever.embedders import EMBEDDERS, EmbedderSpec
from nanoforge.retriever.library import Library
from nanoforge.retriever.rag import MANIFEST_KEY, AskResult, Done, Generator, Withdraw, ask_events

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrieverService"].full_name
DEFAULT_PORT = 50052

#: Proto chunking enum -> our strategy name (UNSPECIFIED = the collection's default).
STRATEGY_OF: dict[pb.ChunkingStrategy.ValueType, str] = {
    pb.CHUNKING_STRATEGY_FIXED_TOKENS: "fixed",
    pb.CHUNKING_STRATEGY_SENTENCES: "sentences",
    pb.CHUNKING_STRATEGY_RECURSIVE: "recursive",
    pb.CHUNKING_STRATEGY_HEADINGS: "markdown",
    pb.CHUNKING_STRATEGY_SEMANTIC: "semantic",
    pb.CHUNKING_STRATEGY_PARENT_CHILD: "parent_child",
}
ENUM_OF: dict[str, pb.ChunkingStrategy.ValueType] = {v: k for k, v in STRATEGY_OF.items()}
INDEX_OF: dict[pb.IndexKind.ValueType, str] = {
    pb.INDEX_KIND_FLAT: "flat",
    pb.INDEX_KIND_HNSW: "hnsw",
    pb.INDEX_KIND_IVF: "ivf",
    pb.INDEX_KIND_IVF_PQ: "ivfpq",
}
INDEX_ENUM_OF: dict[str, pb.IndexKind.ValueType] = {v: k for k, v in INDEX_OF.items()}


def _usage(t0: float, prompt_tokens: int = 0) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=prompt_tokens, total_time_ms=(time.perf_counter() - t0) * 1000)


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _chunking(opts: pb.ChunkingOptions, base: ChunkerSpec) -> ChunkerSpec:
    """Request chunking options over ``base`` (unset fields keep the base)."""
    spec = base
    if opts.strategy:
        if opts.strategy not in STRATEGY_OF:
            raise ValueError(f"unknown chunking strategy {opts.strategy}; known: {sorted(STRATEGY_OF)}")
        spec = replace(spec, strategy=STRATEGY_OF[opts.strategy])
    if opts.chunk_size_tokens:
        spec = replace(spec, max_tokens=int(opts.chunk_size_tokens))
    if opts.chunk_overlap_tokens or opts.chunk_size_tokens:
        spec = replace(spec, overlap=int(opts.chunk_overlap_tokens))
    if spec.overlap >= spec.max_tokens:
        raise ValueError(
            f"chunk_overlap_tokens ({spec.overlap}) must be < chunk_size_tokens ({spec.max_tokens})"
        )
    return spec


def collection_info(col: Collection) -> pb.CollectionInfo:
    """The ``CollectionInfo`` of an open collection."""
    st = col.stats()
    spec = col.chunker_spec
    return pb.CollectionInfo(
        name=col.name,
        description=col.manifest.get("description", ""),
        embedding_model=col.manifest.get("embedder_key", col.embedder_spec.kind),
        embedding_dimension=col.dim,
        default_chunking=pb.ChunkingOptions(
            strategy=ENUM_OF.get(spec.strategy, pb.CHUNKING_STRATEGY_UNSPECIFIED),
            chunk_size_tokens=spec.max_tokens,
            chunk_overlap_tokens=spec.overlap,
        ),
        num_documents=st["documents"],
        num_chunks=st["chunks"],
        created_at=_ts(st["created_at"]),
        updated_at=_ts(st["updated_at"]),
        index_kind=INDEX_ENUM_OF.get(col.index_spec.kind, pb.INDEX_KIND_UNSPECIFIED),
    )


class Counters:
    """Per-collection request counters for Stats (event-loop thread only, so no lock)."""

    def __init__(self) -> None:
        self.search: dict[str, list[float]] = {}  # name -> [count, total ms, max ms]
        self.ask: dict[str, list[float]] = {}  # name -> [count, total ms, abstained]

    def add_search(self, name: str, ms: float) -> None:
        c = self.search.setdefault(name, [0, 0.0, 0.0])
        c[0], c[1], c[2] = c[0] + 1, c[1] + ms, max(c[2], ms)

    def add_ask(self, name: str, ms: float, abstained: bool) -> None:
        c = self.ask.setdefault(name, [0, 0.0, 0])
        c[0], c[1], c[2] = c[0] + 1, c[1] + ms, c[2] + int(abstained)


class SearchBatcher:
    """Micro-batching of concurrent searches that share a collection and options.

    A request joins the pending list of its key; one drain task per key runs the whole pending list as a
    single ``Collection.search_many`` call in a worker thread, and while that call runs new requests queue
    up for the next one. A lone request pays one event-loop turn of delay; under load, batches grow by
    themselves (up to ``max_batch``), which turns N vector-matrix products into one matrix product.
    """

    def __init__(self, max_batch: int = 64) -> None:
        self.max_batch = max_batch
        self._pending: dict[tuple[Any, ...], list[tuple[str, asyncio.Future[Any]]]] = {}
        self._draining: set[tuple[Any, ...]] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self.batches = 0  # number of search_many calls made (for stats and tests)

    async def submit(self, key: tuple[Any, ...], query: str, run: Any) -> Any:
        """Queue ``query``; ``run(list_of_queries) -> list_of_results`` is called on a worker thread."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append((query, fut))
        if key not in self._draining:
            self._draining.add(key)
            task = asyncio.ensure_future(self._drain(key, run))
            self._tasks.add(task)  # keep a reference until done (the loop holds tasks weakly)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _drain(self, key: tuple[Any, ...], run: Any) -> None:
        try:
            await asyncio.sleep(0)  # let requests that arrived in the same loop turn join
            while self._pending.get(key):
                batch = self._pending[key][: self.max_batch]
                self._pending[key] = self._pending[key][self.max_batch :]
                self.batches += 1
                try:
                    results = await asyncio.to_thread(run, [q for q, _ in batch])
                except Exception as exc:  # every caller of this batch gets the error
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for (_, f), res in zip(batch, results, strict=True):
                    if not f.done():
                        f.set_result(res)
        finally:
            self._draining.discard(key)
            if not self._pending.get(key):
                self._pending.pop(key, None)


class RetrieverServicer(pb_grpc.RetrieverServiceServicer):
    """Proto <-> library conversion for every RetrieverService RPC.

    Args:
        library: where collections live.
        default_embedder: spec for collections created without an explicit local embedder name.
        default_index: FAISS index kind for new collections (the proto has no field for it).
        default_chunker: chunking when a request leaves it unset.
        generator: the InferenceService client for generative Ask (None: only extractive answers).
    """

    def __init__(
        self,
        library: Library,
        default_embedder: EmbedderSpec,
        default_index: IndexSpec | None = None,
        default_chunker: ChunkerSpec | None = None,
        generator: Generator | None = None,
    ) -> None:
        self.library = library
        self.default_embedder = default_embedder
        self.default_index = default_index or IndexSpec()
        self.default_chunker = default_chunker or ChunkerSpec()
        self.batcher = SearchBatcher()
        self.counters = Counters()
        self.generator = generator

    def _embedder_spec(self, model: str) -> EmbedderSpec:
        if not model:
            return self.default_embedder
        if model in EMBEDDERS:
            return EmbedderSpec(kind=model)
        if self.default_embedder.kind in ("inference", "openai"):
            return replace(self.default_embedder, model=model, dim=0)
        raise ValueError(f"unknown embedding_model {model!r}; this server offers: {', '.join(EMBEDDERS)}")

    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: Any
    ) -> pb.CreateCollectionResponse:
        t0 = time.perf_counter()
        spec = _chunking(request.default_chunking, self.default_chunker)
        index = self.default_index
        if request.index_kind:
            if request.index_kind not in INDEX_OF:
                raise ValueError(f"unknown index_kind {request.index_kind}; known: {sorted(INDEX_OF)}")
            index = replace(index, kind=INDEX_OF[request.index_kind])
        col = await asyncio.to_thread(
            self.library.create, request.name, self._embedder_spec(request.embedding_model), spec,
            index, request.description, request.exist_ok,
        )  # fmt: skip
        return pb.CreateCollectionResponse(collection=collection_info(col), usage=_usage(t0))

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: Any
    ) -> pb.ListCollectionsResponse:
        t0 = time.perf_counter()
        infos = [collection_info(self.library.get(n)) for n in self.library.names()]
        return pb.ListCollectionsResponse(collections=infos, usage=_usage(t0))

    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: Any
    ) -> pb.DeleteCollectionResponse:
        t0 = time.perf_counter()
        n = await asyncio.to_thread(self.library.delete, request.name)
        return pb.DeleteCollectionResponse(documents_deleted=n, usage=_usage(t0))

    async def Upsert(self, request: pb.UpsertRequest, context: Any) -> pb.UpsertResponse:
        t0 = time.perf_counter()
        col = self.library.get(request.collection)
        docs = [Document(d.id, d.text, d.title, d.source, dict(d.metadata)) for d in request.documents]
        spec = _chunking(request.chunking, col.chunker_spec) if request.HasField("chunking") else None
        res = await asyncio.to_thread(col.upsert, docs, spec)
        return pb.UpsertResponse(
            document_ids=res.document_ids,
            chunks_written=res.chunks_written,
            chunks_replaced=res.chunks_replaced,
            usage=_usage(t0, res.embedded_tokens),
        )

    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        t0 = time.perf_counter()
        col = self.library.get(request.collection)
        n_docs, n_chunks = await asyncio.to_thread(
            col.delete, list(request.document_ids), filters_of(request.filters)
        )
        return pb.DeleteResponse(documents_deleted=n_docs, chunks_deleted=n_chunks, usage=_usage(t0))

    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        t0 = time.perf_counter()
        col = self.library.get(request.collection)
        if not request.query.strip():
            raise ValueError("query must not be empty")
        o = search_options(request.options)
        mode, k, filters, alpha, min_score = o["mode"], o["k"], o["filters"], o["alpha"], o["min_score"]
        key = (id(col), mode, k, tuple(filters), alpha, min_score)
        hits = await self.batcher.submit(
            key,
            request.query,
            lambda qs: col.search_many(qs, mode=mode, k=k, filters=filters, alpha=alpha, min_score=min_score),
        )
        out = [hit_pb(h) for h in hits]
        self.counters.add_search(col.name, (time.perf_counter() - t0) * 1000)
        tokens = len(request.query.split()) if mode != "bm25" else 0
        return pb.SearchResponse(hits=out, usage=_usage(t0, tokens))

    async def Ask(self, request: pb.AskRequest, context: Any) -> pb.AskResponse:
        t0 = time.perf_counter()
        col = self.library.get(request.collection)
        res: AskResult | None = None
        async for ev in ask_events(col, request.question, ask_options(request), self.generator):
            if isinstance(ev, Done):
                res = ev.result
        assert res is not None
        self.counters.add_ask(col.name, (time.perf_counter() - t0) * 1000, res.abstained)
        return pb.AskResponse(
            answer=res.answer, citations=citations_pb(res), abstained=res.abstained,
            abstain_reason=res.abstain_reason, finish_reason=res.finish_reason,
            trace=trace_pb(res) if request.include_trace else None, usage=ask_usage(t0, res),
            groundedness=res.groundedness, sentences=sentences_pb(res, answered_only=True),
        )  # fmt: skip

    async def AskStream(
        self, request: pb.AskStreamRequest, context: Any
    ) -> AsyncIterator[pb.AskStreamResponse]:
        t0 = time.perf_counter()
        col = self.library.get(request.collection)
        withdrawn = False
        async for ev in ask_events(col, request.question, ask_options(request), self.generator):
            if isinstance(ev, Withdraw):
                withdrawn = True
            elif isinstance(ev, Done):
                res = ev.result
                self.counters.add_ask(col.name, (time.perf_counter() - t0) * 1000, res.abstained)
                yield pb.AskStreamResponse(
                    citations=citations_pb(res), abstained=res.abstained, abstain_reason=res.abstain_reason,
                    finish_reason=res.finish_reason, trace=trace_pb(res) if request.include_trace else None,
                    usage=ask_usage(t0, res), groundedness=res.groundedness,
                    sentences=sentences_pb(res, answered_only=True), withdrawn=withdrawn,
                )  # fmt: skip
            else:
                yield pb.AskStreamResponse(text=ev.text, withdrawn=withdrawn)
                withdrawn = False

    async def Stats(self, request: pb.StatsRequest, context: Any) -> pb.StatsResponse:
        t0 = time.perf_counter()
        names = [request.collection] if request.collection else self.library.names()
        out = []
        for name in names:
            col = self.library.get(name)
            n, total, top = self.counters.search.get(col.name, [0, 0.0, 0.0])
            na, ask_total, abst = self.counters.ask.get(col.name, [0, 0.0, 0])
            cal = col.manifest.get(MANIFEST_KEY, {}).get("support_threshold")
            out.append(
                pb.CollectionStats(
                    collection=collection_info(col), search_requests=int(n),
                    search_mean_ms=total / n if n else 0.0, search_max_ms=top, ask_requests=int(na),
                    ask_abstained=int(abst), ask_mean_ms=ask_total / na if na else 0.0,
                    calibrated_threshold=cal, faiss_vectors=col.dense.ntotal,
                )
            )  # fmt: skip
        return pb.StatsResponse(collections=out, usage=_usage(t0))


class RunningServer:
    """A started RetrieverService: its port, and ``stop()`` for a graceful shutdown."""

    def __init__(
        self, server: grpc.aio.Server, health: Any, port: int, library: Library, servicer: RetrieverServicer
    ) -> None:
        self.server = server
        self.servicer = servicer
        self.health = health
        self.port = port
        self.library = library

    async def stop(self, grace: float = 5.0) -> None:
        await srv.graceful_stop(self.server, self.health, grace)
        self.library.close()


async def start_server(
    library: Library,
    default_embedder: EmbedderSpec,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    default_index: IndexSpec | None = None,
    max_message_bytes: int = 64 << 20,
    inference: str = "",
    inference_token: str | None = None,
) -> RunningServer:
    """Build, bind and start the server (port 0: any free port; see ``RunningServer.port``).

    ``inference`` is the InferenceService address (host:port) for generative Ask; "" disables it.
    """
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if token:
        interceptors.append(srv.BearerAuthInterceptor(token))
    interceptors.append(srv.ErrorMappingInterceptor())
    server = srv.create_server(interceptors, max_message_bytes=max_message_bytes)
    generator = None
    if inference:
        from nanoforge.retriever.remote_gen import GrpcGenerator

        generator = GrpcGenerator(inference, token=inference_token)
    servicer = RetrieverServicer(library, default_embedder, default_index, generator=generator)
    pb_grpc.add_RetrieverServiceServicer_to_server(servicer, server)
    health = srv.add_health_and_reflection(server, [SERVICE_NAME])
    creds = srv.server_credentials(tls_cert, tls_key) if tls_cert and tls_key else None
    bound = srv.bind(server, host, port, creds)
    await server.start()
    await srv.mark_serving(health, [SERVICE_NAME])
    return RunningServer(server, health, bound, library, servicer)
