"""RetrieverService over a real gRPC server on 127.0.0.1 (port 0): RPCs, errors, auth, health, reflection."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nanoforge.api.client import make_sync_channel
from nanoforge.api.retriever.v1 import retriever_pb2 as pb
from nanoforge.api.retriever.v1 import retriever_pb2_grpc as pb_grpc
from nanoforge.retriever.documents import MAX_DOCUMENT_CHARS
from nanoforge.retriever.embedders import EmbedderSpec
from nanoforge.retriever.library import Library
from nanoforge.retriever.service import SERVICE_NAME, start_server

TOKEN = "s3cret-token"


class _Server:
    """Runs the service on its own event loop in a background thread."""

    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        coro = start_server(Library(root), EmbedderSpec("hash", dim=64), port=0, token=TOKEN)
        self.running = asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(grace=1.0), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    srv = _Server(tmp_path / "root")
    yield srv
    srv.stop()


@pytest.fixture
def stub(server: _Server) -> Iterator[pb_grpc.RetrieverServiceStub]:
    channel = make_sync_channel(f"127.0.0.1:{server.running.port}", token=TOKEN)
    yield pb_grpc.RetrieverServiceStub(channel)
    channel.close()


def _docs() -> list[pb.Document]:
    return [
        pb.Document(id="cats", text="Cats purr and hunt mice at night.", title="Cats", metadata={"kind": "animal"}),
        pb.Document(id="faiss", text="FAISS searches dense vectors with HNSW graphs.", title="FAISS",
                    source="docs/faiss.md", metadata={"kind": "software"}),
        pb.Document(text="Dogs bark at the mail carrier every morning.", metadata={"kind": "animal"}),
    ]  # fmt: skip


def _code(fn) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def test_collection_lifecycle_and_search(stub: pb_grpc.RetrieverServiceStub) -> None:
    chunking = pb.ChunkingOptions(strategy=pb.CHUNKING_STRATEGY_SENTENCES, chunk_size_tokens=64)
    made = stub.CreateCollection(
        pb.CreateCollectionRequest(name="zoo", description="d", default_chunking=chunking)
    )
    info = made.collection
    assert info.name == "zoo" and info.embedding_dimension == 64 and info.embedding_model == "hash-64"
    assert info.default_chunking.strategy == pb.CHUNKING_STRATEGY_SENTENCES and made.usage.total_time_ms > 0
    again = stub.CreateCollection(pb.CreateCollectionRequest(name="zoo", exist_ok=True))
    assert again.collection.description == "d"
    assert (
        _code(lambda: stub.CreateCollection(pb.CreateCollectionRequest(name="zoo")))[0]
        == grpc.StatusCode.ALREADY_EXISTS
    )

    up = stub.Upsert(pb.UpsertRequest(collection="zoo", documents=_docs()))
    assert (
        up.document_ids[:2] == ["cats", "faiss"] and len(up.document_ids[2]) == 64 and up.chunks_written == 3
    )
    for mode in (
        pb.SEARCH_MODE_DENSE,
        pb.SEARCH_MODE_BM25,
        pb.SEARCH_MODE_HYBRID,
        pb.SEARCH_MODE_UNSPECIFIED,
    ):
        reply = stub.Search(pb.SearchRequest(collection="zoo", query="dense vectors HNSW",
                                             options=pb.SearchOptions(mode=mode, top_k=2)))  # fmt: skip
        hit = reply.hits[0]
        assert hit.document_id == "faiss" and hit.chunk_id == "faiss#0" and hit.source == "docs/faiss.md"
        assert (
            hit.text == _docs()[1].text[hit.start_char : hit.end_char] and hit.metadata["kind"] == "software"
        )
    flt = pb.MetadataFilter(key="kind", operator=pb.FILTER_OPERATOR_EQ, values=["animal"])
    reply = stub.Search(
        pb.SearchRequest(collection="zoo", query="vectors", options=pb.SearchOptions(filters=[flt], top_k=5))
    )
    assert reply.hits and {h.metadata["kind"] for h in reply.hits} == {"animal"}

    listed = stub.ListCollections(pb.ListCollectionsRequest())
    assert [(c.name, c.num_documents, c.num_chunks) for c in listed.collections] == [("zoo", 3, 3)]
    deleted = stub.Delete(pb.DeleteRequest(collection="zoo", filters=[flt]))
    assert (deleted.documents_deleted, deleted.chunks_deleted) == (2, 2)
    assert stub.DeleteCollection(pb.DeleteCollectionRequest(name="zoo")).documents_deleted == 1
    assert not stub.ListCollections(pb.ListCollectionsRequest()).collections


def test_clear_errors(stub: pb_grpc.RetrieverServiceStub) -> None:
    stub.CreateCollection(pb.CreateCollectionRequest(name="c"))
    cases = [
        (lambda: stub.Search(pb.SearchRequest(collection="nope", query="x")), grpc.StatusCode.NOT_FOUND, "unknown collection 'nope'"),
        (lambda: stub.Search(pb.SearchRequest(collection="c", query=" ")), grpc.StatusCode.INVALID_ARGUMENT, "query must not be empty"),
        (lambda: stub.Search(pb.SearchRequest(collection="c", query="x", options=pb.SearchOptions(top_k=101))),
         grpc.StatusCode.INVALID_ARGUMENT, "top_k must be in [1, 100]"),
        (lambda: stub.Upsert(pb.UpsertRequest(collection="c", documents=[pb.Document(id="big", text="x" * (MAX_DOCUMENT_CHARS + 1))])),
         grpc.StatusCode.INVALID_ARGUMENT, f"the limit is {MAX_DOCUMENT_CHARS}"),
        (lambda: stub.Upsert(pb.UpsertRequest(collection="c")), grpc.StatusCode.INVALID_ARGUMENT, "at least one document"),
        (lambda: stub.CreateCollection(pb.CreateCollectionRequest(name="Bad Name")), grpc.StatusCode.INVALID_ARGUMENT,
         "bad collection name 'Bad Name'"),
        (lambda: stub.Search(pb.SearchRequest(collection="c", query="x", options=pb.SearchOptions(
            filters=[pb.MetadataFilter(key="k", values=["v"])]))), grpc.StatusCode.INVALID_ARGUMENT, "operator must be set"),
        (lambda: stub.Ask(pb.AskRequest(collection="c", question="why?")), grpc.StatusCode.INVALID_ARGUMENT,
         "needs an InferenceService"),
        (lambda: list(stub.AskStream(pb.AskStreamRequest(collection="c", question="why?"))), grpc.StatusCode.INVALID_ARGUMENT,
         "needs an InferenceService"),
        (lambda: stub.Ask(pb.AskRequest(collection="nope", question="why?")), grpc.StatusCode.NOT_FOUND,
         "unknown collection 'nope'"),
        (lambda: stub.Ask(pb.AskRequest(collection="c", question=" ", answer_mode=pb.ANSWER_MODE_EXTRACTIVE)),
         grpc.StatusCode.INVALID_ARGUMENT, "question must not be empty"),
        (lambda: stub.Ask(pb.AskRequest(collection="c", question="x", answer_mode=pb.ANSWER_MODE_EXTRACTIVE,
                                        min_groundedness=1.5)), grpc.StatusCode.INVALID_ARGUMENT, "min_groundedness must be in [0, 1]"),
        (lambda: stub.Stats(pb.StatsRequest(collection="nope")), grpc.StatusCode.NOT_FOUND, "unknown collection 'nope'"),
    ]  # fmt: skip
    for call, code, message in cases:
        got_code, details = _code(call)
        assert got_code == code, (message, got_code, details)
        assert message in details


def test_auth_health_and_reflection(server: _Server) -> None:
    target = f"127.0.0.1:{server.running.port}"
    with make_sync_channel(target) as anonymous:
        code, details = _code(
            lambda: pb_grpc.RetrieverServiceStub(anonymous).ListCollections(pb.ListCollectionsRequest())
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
        health = health_pb2_grpc.HealthStub(anonymous).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with make_sync_channel(target, token="wrong") as bad:
        code, _ = _code(
            lambda: pb_grpc.RetrieverServiceStub(bad).ListCollections(pb.ListCollectionsRequest())
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
    with make_sync_channel(target, token=TOKEN) as ok:
        refl = reflection_pb2_grpc.ServerReflectionStub(ok)
        [reply] = list(
            refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in reply.list_services_response.service}
        assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


def test_concurrent_searches_are_micro_batched(server: _Server, stub: pb_grpc.RetrieverServiceStub) -> None:
    stub.CreateCollection(pb.CreateCollectionRequest(name="b"))
    stub.Upsert(pb.UpsertRequest(collection="b", documents=_docs()))
    servicer_batcher = server.running.servicer.batcher
    before = servicer_batcher.batches
    queries = ["cats mice", "dense vectors", "dogs bark"] * 8
    opts = pb.SearchOptions(mode=pb.SEARCH_MODE_DENSE, top_k=1)
    futures = [stub.Search.future(pb.SearchRequest(collection="b", query=q, options=opts)) for q in queries]
    tops = [f.result(timeout=30).hits[0].document_id for f in futures]
    assert tops[:2] == ["cats", "faiss"] and tops[3:5] == ["cats", "faiss"]
    # Each answer is its own query's (batching must not mix them up), and 24 calls took fewer batches.
    singles = [
        stub.Search(pb.SearchRequest(collection="b", query=q, options=opts)).hits[0].document_id
        for q in queries[:3]
    ]
    assert tops[:3] == singles
    assert servicer_batcher.batches - before < len(queries) + 3
