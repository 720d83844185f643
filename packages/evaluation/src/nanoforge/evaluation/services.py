"""Systems under test that are not text generators: the RetrieverService and the RecommenderService.

Both talk gRPC through the generated stubs in ``nanoforge.api`` (never the services' own code) and plug
into the harness registry as backends: ``retriever:HOST:PORT`` answers ``search`` (Search RPC) and ``ask``
(Ask RPC, retrieval-augmented answers with citations); ``recommender:HOST:PORT`` answers ``recommend``
(Recommend RPC). Task types ``retrieval`` / ``rag`` / ``ranking`` (``harness.RUNNERS``) call them; the
metrics (recall@k, MRR, nDCG@k, HR@k, groundedness ...) live in ``metrics.py`` and are computed here on the
client side from what the service returned, so the service cannot grade itself.

Latency is client-observed; the service's own time is the reply's ``Usage.total_time_ms`` (compute_ms).

What it deliberately does not do: create or fill collections (the task's data must already be indexed),
train recommenders, or generate text (``generate`` / ``score`` raise ``UnsupportedError``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from nanoforge.api.client import make_channel
from nanoforge.api.recommender.v1 import recommender_pb2 as rec_pb
from nanoforge.api.recommender.v1 import recommender_pb2_grpc as rec_grpc
from nanoforge.api.retriever.v1 import retriever_pb2 as ret_pb
from nanoforge.api.retriever.v1 import retriever_pb2_grpc as ret_grpc

SEARCH_MODES: dict[str, ret_pb.SearchMode.ValueType] = {
    "dense": ret_pb.SEARCH_MODE_DENSE,
    "bm25": ret_pb.SEARCH_MODE_BM25,
    "hybrid": ret_pb.SEARCH_MODE_HYBRID,
}

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
}


class NotAGeneratorError(ValueError):
    """A retriever / recommender backend was asked to generate or score text."""


@dataclass
class SearchReply:
    """Ranked document ids (chunks folded onto their first document hit) and the chunk texts."""

    document_ids: list[str]
    texts: list[str]
    latency_ms: float = 0.0
    compute_ms: float | None = None
    prompt_tokens: int = 0


@dataclass
class AskReply:
    """A RAG answer, the context chunks its citation markers refer to (marker i -> contexts[i - 1])."""

    text: str
    contexts: list[str]
    cited_document_ids: list[str]
    abstained: bool
    server_groundedness: float | None = None
    latency_ms: float = 0.0
    compute_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecommendReply:
    """Recommended item ids, best first."""

    item_ids: list[str]
    latency_ms: float = 0.0
    compute_ms: float | None = None
    prompt_tokens: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


class _ServiceBackend:
    """What every gRPC service backend shares: channel, transient errors, no text generation."""

    kind = ""

    def __init__(
        self, target: str, *, model: str = "", token: str | None = None, timeout: float = 120.0
    ) -> None:
        self.target, self.model, self.timeout = target, model, timeout
        self.channel = make_channel(target, token=token)

    async def start(self) -> None:
        """Nothing to resolve before the first call."""

    async def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise NotAGeneratorError(f"the {self.kind} backend does not generate text; use grpc, openai or local")

    async def score(self, *args: Any, **kwargs: Any) -> Any:
        raise NotAGeneratorError(f"the {self.kind} backend does not score text; use grpc or local")

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _TRANSIENT

    def format_unsupported(self, exc: BaseException) -> bool:
        return False

    def cpu_seconds(self) -> float | None:
        return None

    async def aclose(self) -> None:
        await self.channel.close()


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def search_mode(name: str) -> ret_pb.SearchMode.ValueType:
    """``"hybrid"`` -> the proto enum value.

    Raises:
        ValueError: for an unknown mode name.
    """
    if name not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {name!r}; accepted: {', '.join(SEARCH_MODES)}")
    return SEARCH_MODES[name]


class RetrieverBackend(_ServiceBackend):
    """The RetrieverService: ``search`` for retrieval metrics, ``ask`` for RAG answers."""

    kind = "retriever"

    def __init__(self, target: str, **kw: Any) -> None:
        super().__init__(target, **kw)
        self.stub = ret_grpc.RetrieverServiceStub(self.channel)

    async def search(
        self, collection: str, query: str, *, mode: str = "hybrid", top_k: int = 10
    ) -> SearchReply:
        """Search and fold chunk hits onto document ids, keeping each document's best (first) rank."""
        t0 = time.perf_counter()
        options = ret_pb.SearchOptions(mode=search_mode(mode), top_k=top_k)
        reply = await self.stub.Search(
            ret_pb.SearchRequest(collection=collection, query=query, options=options), timeout=self.timeout
        )
        docs, texts = [], []
        for hit in reply.hits:
            texts.append(hit.text)
            if hit.document_id not in docs:
                docs.append(hit.document_id)
        return SearchReply(docs, texts, _ms_since(t0), reply.usage.total_time_ms, reply.usage.prompt_tokens)

    async def ask(
        self,
        collection: str,
        question: str,
        *,
        mode: str = "hybrid",
        top_k: int = 5,
        params: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> AskReply:
        """One Ask with the trace on, so the contexts the answer was grounded on come back too.

        Args:
            options: extra ``AskRequest`` fields by name (``abstain_threshold``, ``answer_mode`` ...).
        """
        from nanoforge.api.inference_client import sampling_params

        t0 = time.perf_counter()
        request = ret_pb.AskRequest(
            collection=collection,
            question=question,
            retrieval=ret_pb.SearchOptions(mode=search_mode(mode), top_k=top_k),
            model=self.model,
            include_trace=True,
            **dict(options or {}),
        )
        if params:
            request.sampling.CopyFrom(sampling_params(**params))
        reply = await self.stub.Ask(request, timeout=self.timeout)
        by_id = {h.chunk_id: h.text for h in reply.trace.retrieved}
        contexts = [by_id.get(cid, "") for cid in reply.trace.context_chunk_ids]
        if not any(contexts):  # no trace: rebuild marker order from the citations' quotes
            quotes = {c.marker: c.quote for c in reply.citations}
            contexts = [quotes.get(m, "") for m in range(1, max(quotes, default=0) + 1)]
        u = reply.usage
        return AskReply(
            text=reply.answer,
            contexts=contexts,
            cited_document_ids=list(dict.fromkeys(c.document_id for c in reply.citations)),
            abstained=reply.abstained,
            server_groundedness=None if reply.abstained else float(reply.groundedness),
            latency_ms=_ms_since(t0),
            compute_ms=u.total_time_ms or None,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            notes={"abstain_reason": reply.abstain_reason} if reply.abstained else {},
        )


def history_events(history: Sequence[Any]) -> list[rec_pb.Event]:
    """``["i1", {"item_id": "i2", "event_type": "click"}]`` -> proto events (a bare id is a ``view``).

    Raises:
        ValueError: for an entry that is neither an item id nor a mapping with ``item_id``.
    """
    out = []
    for i, e in enumerate(history):
        if isinstance(e, str | int):
            out.append(rec_pb.Event(item_id=str(e), event_type="view"))
        elif isinstance(e, Mapping) and "item_id" in e:
            out.append(rec_pb.Event(item_id=str(e["item_id"]), event_type=str(e.get("event_type", "view"))))
        else:
            raise ValueError(f"history[{i}] = {e!r}; accepted: an item id or {{item_id, event_type}}")
    return out


class RecommenderBackend(_ServiceBackend):
    """The RecommenderService: ``recommend`` for HR@k / NDCG@k of a held-out next item."""

    kind = "recommender"

    def __init__(self, target: str, **kw: Any) -> None:
        super().__init__(target, **kw)
        self.stub = rec_grpc.RecommenderServiceStub(self.channel)

    async def recommend(
        self, user_id: str, history: Sequence[Any], *, top_k: int = 10, exclude_seen: bool = False
    ) -> RecommendReply:
        """Top-k next items for one user history."""
        t0 = time.perf_counter()
        request = rec_pb.RecommendRequest(
            model=self.model, user_id=user_id, history=history_events(history), top_k=top_k,
            exclude_seen=exclude_seen,
        )  # fmt: skip
        reply = await self.stub.Recommend(request, timeout=self.timeout)
        notes = {"model": reply.model} if reply.model else {}
        return RecommendReply(
            [r.item_id for r in reply.recommendations], _ms_since(t0), reply.usage.total_time_ms or None,
            len(request.history), notes,
        )  # fmt: skip


__all__ = [
    "AskReply",
    "RecommendReply",
    "RecommenderBackend",
    "RetrieverBackend",
    "SearchReply",
    "history_events",
    "search_mode",
]
