"""Conversational query rewriting: heuristic and llm strategies, Ask trace, gRPC history and CLI --history."""

from __future__ import annotations

import asyncio
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
from nanoforge.retriever.documents import Document
from nanoforge.retriever.rag import AskOptions, GenPiece, ask
from nanoforge.retriever.rewrite import QUERY_REGEX, Turn, heuristic_rewrite, is_follow_up, llm_rewrite

#: Only the Acme document lacks the word "founded", so "when was it founded?" alone finds the others.
COMPANIES = [
    Document("acme", "Acme Corporation opened its first anvil factory in Ohio in 1921.", "Acme"),
    Document("globex", "The Globex company was founded in 1989 and builds reactors.", "Globex"),
    Document("initech", "Initech was founded in 1995 and writes banking software.", "Initech"),
    Document("hooli", "Hooli was founded in 2004 and sells phones and search.", "Hooli"),
]
HISTORY = (
    Turn("user", "Tell me about the Acme Corporation"),
    Turn("assistant", "It makes anvils [1]."),
)
FOLLOW_UP = "when was it founded?"


def test_heuristic_resolves_follow_ups_only() -> None:
    r = heuristic_rewrite(HISTORY, FOLLOW_UP)
    assert (r.query, r.strategy) == ("when was it founded? Acme Corporation", "heuristic")
    standalone = "What do Globex reactors cost?"
    assert not is_follow_up(standalone)
    assert heuristic_rewrite(HISTORY, standalone).query == standalone
    assert heuristic_rewrite((), FOLLOW_UP).query == FOLLOW_UP
    # a chain of follow-ups reaches back to the turn that named the subject
    chain = (*HISTORY, Turn("user", "who runs it?"), Turn("assistant", "Wile E. [1]."))
    assert heuristic_rewrite(chain, "and where is it based?").query.endswith("runs Acme Corporation")
    # documented limit: an entity only the assistant named is not carried over
    only_assistant = (Turn("user", "which company makes anvils?"), Turn("assistant", "Acme [1]."))
    assert "Acme" not in heuristic_rewrite(only_assistant, FOLLOW_UP).query
    with pytest.raises(ValueError, match="role 'bot' is not one of"):
        Turn("bot", "hi")


def test_follow_up_retrieves_the_right_chunk_only_with_rewriting(make_collection) -> None:
    col = make_collection("firms")
    col.upsert(COMPANIES)
    base = AskOptions(mode="hybrid", k=1, answer_mode="extractive", history=HISTORY)
    plain = asyncio.run(ask(col, FOLLOW_UP, AskOptions(**{**base.__dict__, "rewrite": "none"}), None))
    rewritten = asyncio.run(ask(col, FOLLOW_UP, base, None))
    assert plain.retrieved[0].document_id != "acme"
    assert plain.search_query == FOLLOW_UP and plain.rewrite_strategy == "none"
    assert rewritten.retrieved[0].document_id == "acme"
    assert rewritten.search_query == "when was it founded? Acme Corporation"
    assert rewritten.question == FOLLOW_UP
    with pytest.raises(ValueError, match="unknown query rewrite 'magic'"):
        asyncio.run(ask(col, FOLLOW_UP, AskOptions(**{**base.__dict__, "rewrite": "magic"}), None))


@pytest.fixture(scope="module")
def firms(
    inference_target: str, tmp_path_factory: pytest.TempPathFactory, rag_server: type
) -> Iterator[pb_grpc.RetrieverServiceStub]:
    srv = rag_server(tmp_path_factory.mktemp("rewrite-root"), inference_target)
    srv.stub.CreateCollection(pb.CreateCollectionRequest(name="firms"))
    docs = [pb.Document(id=d.id, text=d.text, title=d.title) for d in COMPANIES]
    srv.stub.Upsert(pb.UpsertRequest(collection="firms", documents=docs))
    yield srv.stub
    srv.stop()


def _history_pb() -> list[common_pb2.ChatMessage]:
    role = {"user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT}
    return [common_pb2.ChatMessage(role=role[t.role], content=t.content) for t in HISTORY]


def _req(**kw: object) -> pb.AskRequest:
    base: dict[str, object] = dict(
        collection="firms", question=FOLLOW_UP, history=_history_pb(), include_trace=True,
        answer_mode=pb.ANSWER_MODE_EXTRACTIVE, retrieval=pb.SearchOptions(top_k=1),
    )  # fmt: skip
    return pb.AskRequest(**{**base, **kw})


def test_grpc_history_rewrites_and_trace_shows_it(firms: pb_grpc.RetrieverServiceStub) -> None:
    res = firms.Ask(_req())
    assert res.trace.search_query == "when was it founded? Acme Corporation"
    assert res.trace.rewrite_strategy == "heuristic"
    assert res.trace.retrieved[0].document_id == "acme"
    res = firms.Ask(_req(query_rewrite=pb.QUERY_REWRITE_NONE))
    assert res.trace.search_query == FOLLOW_UP and res.trace.retrieved[0].document_id != "acme"
    stream = list(firms.AskStream(pb.AskStreamRequest.FromString(_req().SerializeToString())))
    assert stream[-1].trace.search_query == "when was it founded? Acme Corporation"
    with pytest.raises(grpc.RpcError) as err:
        firms.Ask(_req(history=[common_pb2.ChatMessage(content="no role")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "history[0].role must be set" in err.value.details()


def test_llm_rewrite_with_a_real_tiny_model_is_one_line_or_falls_back(
    firms: pb_grpc.RetrieverServiceStub,
) -> None:
    for question in (FOLLOW_UP, "where is its factory?"):
        res = firms.Ask(_req(question=question, query_rewrite=pb.QUERY_REWRITE_LLM))
        q, how = res.trace.search_query, res.trace.rewrite_strategy
        assert q.strip() and "\n" not in q and len(q) <= 160
        assert how == "llm" or how.startswith("heuristic (llm failed: "), how
        if how != "llm":  # the fallback is exactly the heuristic's query
            assert q == heuristic_rewrite(HISTORY, question).query
        assert res.trace.retrieved  # the pipeline ran to the end


def test_llm_rewrite_falls_back_when_the_service_is_down() -> None:
    from nanoforge.retriever.remote_gen import GrpcGenerator

    async def run() -> tuple[str, str]:
        gen = GrpcGenerator("127.0.0.1:1", timeout=5.0)
        try:
            r = await llm_rewrite(HISTORY, FOLLOW_UP, gen, AskOptions())
        finally:
            await gen.close()
        return r.query, r.strategy

    query, how = asyncio.run(run())
    assert query == "when was it founded? Acme Corporation"
    assert how.startswith("heuristic (llm failed: InferenceError: cannot reach the InferenceService")
    r = asyncio.run(llm_rewrite(HISTORY, FOLLOW_UP, None, AskOptions()))
    assert r.strategy == "heuristic (llm failed: no InferenceService configured)"


def test_cli_history_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "root")
    runner = CliRunner()
    for d in COMPANIES:
        (tmp_path / f"{d.id}.txt").write_text(d.text + "\n")
    res = runner.invoke(group, ["index", "--collection", "f", "--input", str(tmp_path), "--embedder", "hash",
                                "--root", root])  # fmt: skip
    assert res.exit_code == 0, res.output
    hist = tmp_path / "history.jsonl"
    hist.write_text("".join(json.dumps({"role": t.role, "content": t.content}) + "\n" for t in HISTORY))
    args = ["retriever", "ask", "--collection", "f", "--question", FOLLOW_UP, "--answer-mode", "extractive",
            "--history", str(hist), "-k", "1", "--root", root, "--json"]  # fmt: skip
    res = runner.invoke(group, args[1:])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["search_query"] == "when was it founded? Acme Corporation"
    assert data["trace"]["search_query"] == data["search_query"] and data["question"] == FOLLOW_UP
    assert "acme" in data["trace"]["retrieved"][0]["document_id"]
    hist.write_text('{"role": "user"}\n')
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1 and "history.jsonl:1: expected a JSON object with 'role' and 'content'" in err
    assert len(err.strip().splitlines()) == 1


class _ScriptedGenerator:
    """A ``rag.Generator`` that replies with fixed text and records the regex it was given."""

    def __init__(self, text: str) -> None:
        self.text, self.regexes = text, []

    async def count_tokens(self, texts, model):  # pragma: no cover - not used by rewriting
        return [len(t.split()) for t in texts]

    async def stream(self, messages, regex, opts):
        self.regexes.append(regex)
        for word in self.text.split(" "):
            yield GenPiece(word + " ")


def test_llm_rewrite_accepts_an_on_topic_line_and_rejects_an_off_topic_one() -> None:
    gen = _ScriptedGenerator("Acme Corporation founding year")
    r = asyncio.run(llm_rewrite(HISTORY, FOLLOW_UP, gen, AskOptions()))
    assert (r.query, r.strategy) == ("Acme Corporation founding year", "llm")
    assert gen.regexes == [QUERY_REGEX] and re.fullmatch(QUERY_REGEX, "a\nb") is None
    r = asyncio.run(llm_rewrite(HISTORY, FOLLOW_UP, _ScriptedGenerator("zebra quantum"), AskOptions()))
    assert r.query == "when was it founded? Acme Corporation" and "shares no content word" in r.strategy
