"""Ask / AskStream / Stats through a real RetrieverService that generates with a REAL InferenceService.

The InferenceService is a ``nanoforge serve`` child process with a tiny random-weights model (conftest), so
answers are gibberish; what is checked is the machinery: citations can only name retrieved chunks (the
regex constraint), streaming equals Ask, abstention, traces, groundedness fields and error codes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.retriever.v1 import retriever_pb2 as pb
from nanoforge.api.retriever.v1 import retriever_pb2_grpc as pb_grpc
from nanoforge.cli.main import main
from nanoforge.retriever.cli import group
from nanoforge.retriever.rag import ABSTAIN_TEXT, join_stream

DOCS = [
    pb.Document(id="cats", text="Cats are small felines. A cat purrs and hunts mice at night.", title="Cats"),
    pb.Document(id="dogs", text="Dogs are loyal companions. A dog barks and fetches sticks.", title="Dogs"),
    pb.Document(
        id="faiss", text="FAISS searches dense vectors with HNSW graphs and IVF cells.", title="FAISS"
    ),
]


@pytest.fixture(scope="module")
def rag(
    inference_target: str, tmp_path_factory: pytest.TempPathFactory, rag_server: type
) -> Iterator[pb_grpc.RetrieverServiceStub]:
    srv = rag_server(tmp_path_factory.mktemp("rag-root"), inference_target)
    srv.stub.CreateCollection(pb.CreateCollectionRequest(name="zoo", index_kind=pb.INDEX_KIND_HNSW))
    srv.stub.Upsert(pb.UpsertRequest(collection="zoo", documents=DOCS))
    yield srv.stub
    srv.stop()


def _ask(**kw: object) -> pb.AskRequest:
    base: dict[str, object] = {
        "collection": "zoo",
        "question": "what do cats hunt at night?",
        "min_groundedness": 0.0,
    }
    return pb.AskRequest(**{**base, **kw})


def _stream(stub: pb_grpc.RetrieverServiceStub, req: pb.AskRequest) -> list[pb.AskStreamResponse]:
    return list(stub.AskStream(pb.AskStreamRequest.FromString(req.SerializeToString())))


def test_citations_always_name_retrieved_chunks(rag: pb_grpc.RetrieverServiceStub) -> None:
    cited_any = 0
    for seed in range(4):
        sampling = common_pb2.SamplingParams(temperature=1.0, seed=seed, max_new_tokens=256)
        res = rag.Ask(_ask(sampling=sampling, include_trace=True, retrieval=pb.SearchOptions(top_k=2)))
        assert not res.abstained, res.abstain_reason
        context = list(res.trace.context_chunk_ids)
        assert 1 <= len(context) <= 2
        markers = {int(m) for m in re.findall(r"\[(\d+)\]", res.answer)}
        assert markers <= set(range(1, len(context) + 1)), (res.answer, context)
        assert {c.marker for c in res.citations} == markers
        for c in res.citations:
            assert c.chunk_id == context[c.marker - 1]
            assert c.quote and c.title in {"Cats", "Dogs", "FAISS"}
        cited_any += bool(res.citations)
    assert cited_any >= 2  # the random model does finish cited sentences: the check above is not vacuous


def test_stream_concatenation_equals_ask_under_greedy(rag: pb_grpc.RetrieverServiceStub) -> None:
    req = _ask(include_trace=True, sampling=common_pb2.SamplingParams(temperature=0.0, max_new_tokens=200))
    whole = rag.Ask(req)
    parts = _stream(rag, req)
    assert len(parts) > 2  # really streamed, not one message
    assert not any(p.withdrawn for p in parts)
    assert join_stream(_joined(parts)) == "".join(p.text for p in parts) == whole.answer
    last = parts[-1]
    assert [c.chunk_id for c in last.citations] == [c.chunk_id for c in whole.citations]
    assert last.finish_reason == whole.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
    assert last.usage.completion_tokens == whole.usage.completion_tokens > 0
    assert all(not p.HasField("usage") for p in parts[:-1])
    # the trace: retrieved hits with scores, the prompt, timings
    tr = whole.trace
    assert tr.search_query == req.question and len(tr.retrieved) >= 1
    assert tr.retrieved[0].document_id == "cats" and tr.retrieved[0].score > 0
    assert "[1] Cats:" in tr.prompt and req.question in tr.prompt and ABSTAIN_TEXT in tr.prompt
    assert tr.retrieval_time_ms > 0 and tr.generation_time_ms > 0 and 0 < tr.support_score <= 1.0
    assert tr.abstain_threshold == -1.0  # uncalibrated collection: never abstain on support
    assert last.trace.prompt == tr.prompt


def test_groundedness_flag_drop_and_withdraw(rag: pb_grpc.RetrieverServiceStub) -> None:
    sampling = common_pb2.SamplingParams(temperature=0.0, max_new_tokens=200)
    flagged = rag.Ask(_ask(sampling=sampling, min_groundedness=0.9, include_trace=True))
    # random text is not grounded: no sentence reaches 0.9, so the service abstains after reading
    assert flagged.abstained and "groundedness" in flagged.abstain_reason and flagged.answer == ABSTAIN_TEXT
    assert flagged.trace.sentences and all(not s.supported for s in flagged.trace.sentences)
    assert all(0.0 <= s.groundedness < 0.9 for s in flagged.trace.sentences)
    parts = _stream(rag, _ask(sampling=sampling, min_groundedness=0.9))
    assert any(p.withdrawn for p in parts)  # the streamed gibberish was withdrawn ...
    assert "".join(p.text for p in parts) != ABSTAIN_TEXT  # ... after it was shown,
    assert join_stream(_joined(parts)) == ABSTAIN_TEXT  # and replaced by the abstention
    dropped = rag.Ask(_ask(sampling=sampling, min_groundedness=0.9, drop_unsupported=True))
    assert dropped.abstained and dropped.answer == ABSTAIN_TEXT
    # extractive answers quote the passages: fully grounded
    ext = rag.Ask(_ask(answer_mode=pb.ANSWER_MODE_EXTRACTIVE, min_groundedness=0.9))
    assert not ext.abstained and ext.groundedness == 1.0 and ext.citations[0].document_id == "cats"
    assert ext.sentences and all(s.supported for s in ext.sentences)


def _joined(parts: list[pb.AskStreamResponse]) -> list[str | None]:
    out: list[str | None] = []
    for p in parts:
        if p.withdrawn:
            out.append(None)
        out.append(p.text)
    return out


def test_abstains_on_high_threshold_and_irrelevant_questions(rag: pb_grpc.RetrieverServiceStub) -> None:
    res = rag.Ask(_ask(abstain_threshold=0.99, include_trace=True))
    assert res.abstained and res.answer == ABSTAIN_TEXT and not res.citations
    assert "support" in res.abstain_reason and "< threshold 0.990" in res.abstain_reason
    assert res.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED and res.trace.generation_time_ms == 0
    parts = _stream(rag, _ask(abstain_threshold=0.99))
    assert [p.text for p in parts if p.text] == [ABSTAIN_TEXT] and parts[-1].abstained
    on_topic = rag.Ask(_ask(abstain_threshold=0.2, include_trace=True, answer_mode=pb.ANSWER_MODE_EXTRACTIVE))
    off_topic = rag.Ask(
        _ask(question="zzyzx quantum qwerty?", abstain_threshold=0.2, include_trace=True,
             answer_mode=pb.ANSWER_MODE_EXTRACTIVE)
    )  # fmt: skip
    assert not on_topic.abstained and off_topic.abstained
    assert off_topic.trace.support_score < 0.2 <= on_topic.trace.support_score


def test_stats_and_index_kind(rag: pb_grpc.RetrieverServiceStub) -> None:
    rag.Search(pb.SearchRequest(collection="zoo", query="cats"))
    st = rag.Stats(pb.StatsRequest(collection="zoo")).collections[0]
    assert st.collection.index_kind == pb.INDEX_KIND_HNSW and st.collection.num_chunks == 3
    assert st.search_requests >= 1 and st.search_mean_ms > 0 and st.ask_requests >= 1
    assert st.ask_abstained >= 1 and not st.HasField("calibrated_threshold") and st.faiss_vectors == 3
    assert "zoo" in [c.collection.name for c in rag.Stats(pb.StatsRequest()).collections]


def test_unreachable_inference_is_unavailable(tmp_path: Path, rag_server: type) -> None:
    srv = rag_server(tmp_path / "root", "127.0.0.1:1")
    try:
        srv.stub.CreateCollection(pb.CreateCollectionRequest(name="c"))
        srv.stub.Upsert(pb.UpsertRequest(collection="c", documents=DOCS[:1]))
        with pytest.raises(grpc.RpcError) as err:
            srv.stub.Ask(pb.AskRequest(collection="c", question="cats?"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot reach the InferenceService at 127.0.0.1:1" in err.value.details()
    finally:
        srv.stop()


def test_cli_ask(inference_target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "cats.txt"
    notes.write_text("Cats are small felines. A cat purrs and hunts mice at night.\n")
    root = str(tmp_path / "root")
    runner = CliRunner()
    res = runner.invoke(
        group, ["index", "--collection", "n", "--input", str(notes), "--embedder", "hash", "--root", root]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(group, ["ask", "--collection", "n", "--question", "what do cats hunt?", "--answer-mode",
                                "extractive", "--root", root, "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["answer"].endswith("[1].") and data["citations"][0]["document_id"]
    assert data["trace"]["retrieved"] and not data["abstained"]
    res = runner.invoke(group, ["ask", "--collection", "n", "--question", "what do cats hunt?", "--inference",
                                inference_target, "--min-groundedness", "0", "--root", root])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "support" in res.output and "groundedness" in res.output
    code = main(["retriever", "ask", "--collection", "n", "--question", "cats?", "--inference", "127.0.0.1:1",
                 "--root", root])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach the InferenceService at 127.0.0.1:1" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code = main(["retriever", "ask", "--collection", "n", "--question", "q", "--root", root])
    assert code == 1 and "needs --inference" in capsys.readouterr().err


def test_new_chunking_strategies_and_index_kinds(rag: pb_grpc.RetrieverServiceStub) -> None:
    for name, strategy, kind in (("semantic", pb.CHUNKING_STRATEGY_SEMANTIC, pb.INDEX_KIND_FLAT),
                                 ("pc", pb.CHUNKING_STRATEGY_PARENT_CHILD, pb.INDEX_KIND_IVF)):  # fmt: skip
        info = rag.CreateCollection(
            pb.CreateCollectionRequest(
                name=name,
                index_kind=kind,
                default_chunking=pb.ChunkingOptions(strategy=strategy, chunk_size_tokens=6),
            )
        ).collection
        assert info.default_chunking.strategy == strategy and info.index_kind == kind
        up = rag.Upsert(pb.UpsertRequest(collection=name, documents=DOCS))
        assert up.chunks_written > len(DOCS)  # 6-token chunks: several per document
        hit = rag.Search(pb.SearchRequest(collection=name, query="cats hunt mice")).hits[0]
        assert hit.document_id == "cats"
    # parent-child returns the parent passage (longer than a 6-token child)
    assert len(rag.Search(pb.SearchRequest(collection="pc", query="cats hunt mice")).hits[0].text.split()) > 6
