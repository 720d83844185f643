"""RetrieverService over gRPC (port 50052): collections, upsert, delete and dense / BM25 / hybrid search.

The servicer only converts protos to Python and back and calls ``Library`` / ``Collection``; errors are
exceptions that the shared ``ErrorMappingInterceptor`` (nanoforge.api.server) maps to status codes:
``ValueError`` -> INVALID_ARGUMENT (empty query, k out of range, oversize or empty document, bad filter),
``CollectionNotFoundError`` -> NOT_FOUND, ``CollectionExistsError`` -> ALREADY_EXISTS, and
``NotImplementedError`` -> UNIMPLEMENTED for Ask / AskStream (retrieval-augmented answers are a later task).
Blocking work (embedding, FAISS, SQLite) runs in worker threads so the event loop keeps serving.

What it deliberately does not do: generate answers, or import the InferenceService (embeddings come from
the configured embedder, which may be that service over gRPC).
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
from nanoforge.retriever.dense import IndexSpec
from nanoforge.retriever.documents import Document
from nanoforge.retriever.embedders import EMBEDDERS, EmbedderSpec
from nanoforge.retriever.library import Library
from nanoforge.retriever.search import MetadataFilter

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrieverService"].full_name
DEFAULT_PORT = 50052
MAX_TOP_K = 100

#: Proto chunking enum -> our strategy name (UNSPECIFIED = the collection's default).
STRATEGY_OF: dict[int, str] = {
    pb.CHUNKING_STRATEGY_FIXED_TOKENS: "fixed",
    pb.CHUNKING_STRATEGY_SENTENCES: "sentences",
    pb.CHUNKING_STRATEGY_RECURSIVE: "recursive",
    pb.CHUNKING_STRATEGY_HEADINGS: "markdown",
}
ENUM_OF: dict[str, int] = {v: k for k, v in STRATEGY_OF.items()}
MODE_OF: dict[int, str] = {
    pb.SEARCH_MODE_UNSPECIFIED: "hybrid",
    pb.SEARCH_MODE_DENSE: "dense",
    pb.SEARCH_MODE_BM25: "bm25",
    pb.SEARCH_MODE_HYBRID: "hybrid",
}
OP_OF: dict[int, str] = {
    pb.FILTER_OPERATOR_EQ: "eq",
    pb.FILTER_OPERATOR_NE: "ne",
    pb.FILTER_OPERATOR_IN: "in",
    pb.FILTER_OPERATOR_NOT_IN: "not_in",
    pb.FILTER_OPERATOR_PREFIX: "prefix",
}


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


def _filters(items: Any) -> list[MetadataFilter]:
    out = []
    for f in items:
        if f.operator not in OP_OF:
            raise ValueError(f"filter on {f.key!r}: operator must be set (EQ, NE, IN, NOT_IN or PREFIX)")
        out.append(MetadataFilter(f.key, OP_OF[f.operator], tuple(f.values)))
    return out


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
    )


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
    """

    def __init__(
        self,
        library: Library,
        default_embedder: EmbedderSpec,
        default_index: IndexSpec | None = None,
        default_chunker: ChunkerSpec | None = None,
    ) -> None:
        self.library = library
        self.default_embedder = default_embedder
        self.default_index = default_index or IndexSpec()
        self.default_chunker = default_chunker or ChunkerSpec()
        self.batcher = SearchBatcher()

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
        col = await asyncio.to_thread(
            self.library.create, request.name, self._embedder_spec(request.embedding_model), spec,
            self.default_index, request.description, request.exist_ok,
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
            col.delete, list(request.document_ids), _filters(request.filters)
        )
        return pb.DeleteResponse(documents_deleted=n_docs, chunks_deleted=n_chunks, usage=_usage(t0))

    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        t0 = time.perf_counter()
        col = self.library.get(request.collection)
        opts = request.options
        if not request.query.strip():
            raise ValueError("query must not be empty")
        k = opts.top_k or 5
        if not 1 <= k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in [1, {MAX_TOP_K}] (0: 5), got {opts.top_k}")
        mode = MODE_OF.get(opts.mode)
        if mode is None:
            raise ValueError(f"unknown search mode {opts.mode}; known: {sorted(MODE_OF)}")
        filters = _filters(opts.filters)
        alpha = opts.hybrid_alpha if opts.HasField("hybrid_alpha") else 0.5
        min_score = opts.min_score if opts.HasField("min_score") else None
        key = (id(col), mode, k, tuple(filters), alpha, min_score)
        hits = await self.batcher.submit(
            key,
            request.query,
            lambda qs: col.search_many(qs, mode=mode, k=k, filters=filters, alpha=alpha, min_score=min_score),
        )
        out = [
            pb.SearchHit(
                chunk_id=h.chunk_id,
                document_id=h.document_id,
                text=h.text,
                score=h.score,
                dense_score=h.dense_score,
                bm25_score=h.bm25_score,
                title=h.title,
                source=h.source,
                metadata=h.metadata,
                start_char=h.start,
                end_char=h.end,
            )
            for h in hits
        ]
        tokens = len(request.query.split()) if mode != "bm25" else 0
        return pb.SearchResponse(hits=out, usage=_usage(t0, tokens))

    async def Ask(self, request: pb.AskRequest, context: Any) -> pb.AskResponse:
        raise NotImplementedError("Ask (retrieval-augmented answers) is not implemented yet; use Search")

    async def AskStream(
        self, request: pb.AskStreamRequest, context: Any
    ) -> AsyncIterator[pb.AskStreamResponse]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "AskStream (retrieval-augmented answers) is not implemented yet; use Search",
        )
        yield pb.AskStreamResponse()  # pragma: no cover - abort raises


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
) -> RunningServer:
    """Build, bind and start the server (port 0: any free port; see ``RunningServer.port``)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if token:
        interceptors.append(srv.BearerAuthInterceptor(token))
    interceptors.append(srv.ErrorMappingInterceptor())
    server = srv.create_server(interceptors, max_message_bytes=max_message_bytes)
    servicer = RetrieverServicer(library, default_embedder, default_index)
    pb_grpc.add_RetrieverServiceServicer_to_server(servicer, server)
    health = srv.add_health_and_reflection(server, [SERVICE_NAME])
    creds = srv.server_credentials(tls_cert, tls_key) if tls_cert and tls_key else None
    bound = srv.bind(server, host, port, creds)
    await server.start()
    await srv.mark_serving(health, [SERVICE_NAME])
    return RunningServer(server, health, bound, library, servicer)
