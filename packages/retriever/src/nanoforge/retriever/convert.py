"""Proto <-> library conversions of the RetrieverService: search options, hits, Ask options and results.

What it does: checks request fields (top_k range, enums, filters) while turning them into library values,
and turns library results (``Hit``, ``rag.AskResult``) into reply messages; ``ask_result_dict`` is the JSON
view that ``nanoforge retriever ask --json`` prints.
What it deliberately does not do: call the library (the servicer in service.py does), or touch gRPC.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.retriever.v1 import retriever_pb2 as pb
from nanoforge.retriever.rag import AskOptions, AskResult
from nanoforge.retriever.rewrite import Turn
from nanoforge.retriever.search import Hit, MetadataFilter

MAX_TOP_K = 100

MODE_OF: dict[int, str] = {
    pb.SEARCH_MODE_UNSPECIFIED: "hybrid",
    pb.SEARCH_MODE_DENSE: "dense",
    pb.SEARCH_MODE_BM25: "bm25",
    pb.SEARCH_MODE_HYBRID: "hybrid",
}
ANSWER_MODE_OF: dict[int, str] = {
    pb.ANSWER_MODE_UNSPECIFIED: "generative",
    pb.ANSWER_MODE_GENERATIVE: "generative",
    pb.ANSWER_MODE_EXTRACTIVE: "extractive",
}
REWRITE_OF: dict[int, str] = {
    pb.QUERY_REWRITE_UNSPECIFIED: "heuristic",
    pb.QUERY_REWRITE_HEURISTIC: "heuristic",
    pb.QUERY_REWRITE_LLM: "llm",
    pb.QUERY_REWRITE_NONE: "none",
}
OP_OF: dict[int, str] = {
    pb.FILTER_OPERATOR_EQ: "eq",
    pb.FILTER_OPERATOR_NE: "ne",
    pb.FILTER_OPERATOR_IN: "in",
    pb.FILTER_OPERATOR_NOT_IN: "not_in",
    pb.FILTER_OPERATOR_PREFIX: "prefix",
}


def usage_of(t0: float, prompt_tokens: int = 0) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=prompt_tokens, total_time_ms=(time.perf_counter() - t0) * 1000)


def filters_of(items: Any) -> list[MetadataFilter]:
    out = []
    for f in items:
        if f.operator not in OP_OF:
            raise ValueError(f"filter on {f.key!r}: operator must be set (EQ, NE, IN, NOT_IN or PREFIX)")
        out.append(MetadataFilter(f.key, OP_OF[f.operator], tuple(f.values)))
    return out


def hit_pb(h: Hit) -> pb.SearchHit:
    """``Hit`` -> ``SearchHit``."""
    return pb.SearchHit(
        chunk_id=h.chunk_id, document_id=h.document_id, text=h.text, score=h.score, dense_score=h.dense_score,
        bm25_score=h.bm25_score, title=h.title, source=h.source, metadata=h.metadata, start_char=h.start,
        end_char=h.end,
    )  # fmt: skip


def search_options(opts: pb.SearchOptions) -> dict[str, Any]:
    """Checked retrieval options as keyword arguments: mode, k, filters, alpha, min_score."""
    k = opts.top_k or 5
    if not 1 <= k <= MAX_TOP_K:
        raise ValueError(f"top_k must be in [1, {MAX_TOP_K}] (0: 5), got {opts.top_k}")
    mode = MODE_OF.get(opts.mode)
    if mode is None:
        raise ValueError(f"unknown search mode {opts.mode}; known: {sorted(MODE_OF)}")
    return {
        "mode": mode,
        "k": k,
        "filters": filters_of(opts.filters),
        "alpha": opts.hybrid_alpha if opts.HasField("hybrid_alpha") else 0.5,
        "min_score": opts.min_score if opts.HasField("min_score") else None,
    }


def history_of(messages: Any) -> tuple[Turn, ...]:
    """``ChatMessage`` protos -> ``Turn`` s (role ``ROLE_USER`` -> ``"user"``; an unset role is an error)."""
    out = []
    for i, m in enumerate(messages):
        if not m.role or m.role not in common_pb2.Role.values():
            raise ValueError(
                f"history[{i}].role must be set to SYSTEM, USER, ASSISTANT or TOOL, got {m.role}"
            )
        out.append(Turn(common_pb2.Role.Name(m.role).removeprefix("ROLE_").lower(), m.content))
    return tuple(out)


def ask_options(request: pb.AskRequest | pb.AskStreamRequest) -> AskOptions:
    """``AskRequest`` (or its stream twin) -> checked ``AskOptions``."""
    ret = search_options(request.retrieval)
    if request.answer_mode not in ANSWER_MODE_OF:
        raise ValueError(f"unknown answer_mode {request.answer_mode}; known: {sorted(ANSWER_MODE_OF)}")
    if request.query_rewrite not in REWRITE_OF:
        raise ValueError(f"unknown query_rewrite {request.query_rewrite}; known: {sorted(REWRITE_OF)}")
    opts = AskOptions(
        mode=ret["mode"], k=ret["k"], filters=tuple(ret["filters"]), alpha=ret["alpha"],
        abstain_threshold=request.abstain_threshold if request.HasField("abstain_threshold") else None,
        max_context_tokens=request.max_context_tokens or 1024, answer_mode=ANSWER_MODE_OF[request.answer_mode],
        drop_unsupported=request.drop_unsupported,
        sampling=request.sampling if request.HasField("sampling") else None,
        model=request.model, adapter=request.adapter, history=history_of(request.history),
        rewrite=REWRITE_OF[request.query_rewrite],
    )  # fmt: skip
    if request.HasField("min_groundedness"):
        opts = replace(opts, min_groundedness=request.min_groundedness)
    opts.check()
    return opts


def sentences_pb(res: AskResult, answered_only: bool) -> list[pb.SentenceGroundedness]:
    """The checked sentences (only those in the answer when ``answered_only``)."""
    if answered_only and res.abstained:
        return []
    return [
        pb.SentenceGroundedness(
            text=s.text, markers=list(s.markers), groundedness=s.groundedness, supported=s.supported
        )
        for s in res.sentences
        if s.text in res.answer or not answered_only
    ]


def citations_pb(res: AskResult) -> list[pb.Citation]:
    """One ``Citation`` per marker the answer cites, ordered by marker."""
    out = []
    for m in sorted(res.cited):
        h = res.context[m - 1]
        out.append(
            pb.Citation(marker=m, chunk_id=h.chunk_id, document_id=h.document_id, title=h.title,
                        source=h.source, quote=h.text, score=h.score)
        )  # fmt: skip
    return out


def trace_pb(res: AskResult) -> pb.AskTrace:
    """The ``AskTrace`` of a result."""
    return pb.AskTrace(
        search_query=res.search_query or res.question, rewrite_strategy=res.rewrite_strategy, retrieved=[hit_pb(h) for h in res.retrieved],
        context_chunk_ids=[h.chunk_id for h in res.context], prompt=res.prompt,
        retrieval_time_ms=res.retrieval_ms, generation_time_ms=res.generation_ms, support_score=res.support,
        abstain_threshold=res.threshold, sentences=sentences_pb(res, answered_only=False),
        raw_answer="".join(s.text for s in res.sentences),
    )  # fmt: skip


def ask_usage(t0: float, res: AskResult) -> common_pb2.Usage:
    u = usage_of(t0, res.prompt_tokens + res.query_tokens)
    u.completion_tokens = res.completion_tokens
    return u


def ask_result_dict(res: AskResult) -> dict[str, Any]:
    """A JSON-ready view of an ``AskResult`` (what ``nanoforge retriever ask --json`` prints)."""
    from google.protobuf.json_format import MessageToDict

    def as_dict(msg: Any) -> dict[str, Any]:
        return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)

    return {
        "question": res.question, "search_query": res.search_query or res.question, "answer": res.answer, "abstained": res.abstained,
        "abstain_reason": res.abstain_reason, "support": res.support, "threshold": res.threshold,
        "groundedness": res.groundedness,
        "citations": [as_dict(c) for c in citations_pb(res)],
        "sentences": [as_dict(x) for x in sentences_pb(res, False)],
        "trace": as_dict(trace_pb(res)),
        "finish_reason": common_pb2.FinishReason.Name(res.finish_reason),
        "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens},
    }  # fmt: skip
