"""Ask: retrieve -> numbered context -> constrained generation (or extraction) -> cited, checked answer.

The pipeline of one question (``ask_events`` yields it as a stream; ``ask`` collects it):

1. **Retrieve** the top-k chunks (dense / BM25 / hybrid, filters) and compute the **support score**: the
   best cosine similarity between the question and a retrieved chunk under the collection's embedder.
   Unlike ``Hit.score`` (a cosine, a BM25 score or an RRF fusion by mode) it is on one scale for every
   mode, so one threshold serves them all. Support below the threshold -> abstain before generating.
   The threshold is the request's, else the collection's calibrated one (``calibrate.py``), else
   ``UNCALIBRATED`` = -1 (the lowest cosine: never abstain on support).
2. **Context**: chunks in rank order, numbered ``[1] [2] ...``, while they fit ``max_context_tokens``.
3. **Answer**, one of ``ANSWER_MODES``:
   - ``generative``: chat prompt to the InferenceService (gRPC ``GenerateStream``) with a *regex*
     ``response_format`` (``answer_regex``): either the exact abstention text, or 1..N sentences each
     ending in markers drawn ONLY from the context numbers. Constrained decoding makes an invalid citation
     impossible, whatever the weights. The regex (not a JSON schema) lets the answer stream as plain text.
   - ``extractive``: the best-matching context sentences, quoted with their markers (``grounding.py``).
4. **Check**: each sentence gets a groundedness score against the chunks it cites; unsupported sentences
   are flagged, or dropped (``drop_unsupported``). No supported sentence left -> abstain.

Streaming: text is yielded as generated; with ``drop_unsupported`` it is yielded one checked sentence at
a time. When the check abstains after text went out, a ``Withdraw`` event says so (the client drops what
it showed); the abstention text follows. ``join_stream`` applies these rules, and equals ``ask``'s answer.

History: before step 1 the question is rewritten from ``AskOptions.history`` into a standalone query
(``rewrite.py``; strategy ``AskOptions.rewrite``, default ``heuristic``). That query is what is searched,
what the support score and extractive answers compare with, and the question shown to the reader; the
result keeps the original ``question`` and the ``search_query``.

What it deliberately does not do: re-ranking, or retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from nanoforge.api.common.v1 import common_pb2
from nanoforge.retriever.collection import Collection, embed_text
from nanoforge.retriever.grounding import (
    DEFAULT_MIN_GROUNDEDNESS,
    AnswerSentence,
    extract_answer,
    overall_groundedness,
    score_sentences,
)
from nanoforge.retriever.rewrite import REWRITERS, Turn, rewrite_query
from nanoforge.retriever.search import Hit, MetadataFilter

#: What the service answers when it abstains (and the one string the model may write instead of an answer).
ABSTAIN_TEXT = "Not in the documents."
ANSWER_MODES = ("generative", "extractive")
#: Manifest key holding the calibrated abstention threshold (written by ``calibrate.save_threshold``).
MANIFEST_KEY = "rag"
#: Threshold of a collection that was never calibrated: the lowest cosine, so support never abstains.
UNCALIBRATED = -1.0
#: Longest generated sentence body, in characters, and most sentences per answer.
MAX_SENTENCE_CHARS, MAX_SENTENCES = 200, 3

SYSTEM_PROMPT = (
    "Answer the question using only the numbered passages. End every sentence with the number of the "
    f'passage that supports it, like [1]. If the passages do not contain the answer, reply "{ABSTAIN_TEXT}"'
)


@dataclass(frozen=True)
class AskOptions:
    """Everything an Ask request can set (defaults = the proto's "unset").

    Attributes:
        mode: search mode (dense, bm25, hybrid).
        k: chunks retrieved.
        filters: metadata filters.
        alpha: hybrid weight of the dense ranking.
        abstain_threshold: support threshold; None = the collection's calibrated value (-1 if none).
        max_context_tokens: budget for passage text in the prompt.
        answer_mode: a member of ``ANSWER_MODES``.
        min_groundedness: sentences below this are unsupported.
        drop_unsupported: drop unsupported sentences instead of flagging them.
        sampling: generation sampling (temperature 0 and 256 tokens when unset).
        model: InferenceService model ("" = its default).
        adapter: LoRA adapter of that model.
        max_sentence_chars: longest generated sentence before its marker (a small model needs a short leash).
        history: earlier turns of the conversation, oldest first.
        rewrite: query rewrite strategy, a key of ``rewrite.REWRITERS``.
    """

    mode: str = "hybrid"
    k: int = 5
    filters: tuple[MetadataFilter, ...] = ()
    alpha: float = 0.5
    abstain_threshold: float | None = None
    max_context_tokens: int = 1024
    answer_mode: str = "generative"
    min_groundedness: float = DEFAULT_MIN_GROUNDEDNESS
    drop_unsupported: bool = False
    sampling: common_pb2.SamplingParams | None = None
    model: str = ""
    adapter: str = ""
    max_sentence_chars: int = MAX_SENTENCE_CHARS
    history: tuple[Turn, ...] = ()
    rewrite: str = "heuristic"

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad option."""
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"unknown answer mode {self.answer_mode!r}; known: {', '.join(ANSWER_MODES)}")
        if self.max_context_tokens < 1:
            raise ValueError(f"max_context_tokens must be >= 1, got {self.max_context_tokens}")
        if self.max_sentence_chars < 1:
            raise ValueError(f"max_sentence_chars must be >= 1, got {self.max_sentence_chars}")
        if self.rewrite not in REWRITERS:
            raise ValueError(f"unknown query rewrite {self.rewrite!r}; known: {', '.join(REWRITERS)}")
        if not 0.0 <= self.min_groundedness <= 1.0:
            raise ValueError(f"min_groundedness must be in [0, 1], got {self.min_groundedness}")


@dataclass(frozen=True)
class GenPiece:
    """A piece of a generation stream; the counters are set on the last piece only."""

    text: str
    finish_reason: common_pb2.FinishReason.ValueType = common_pb2.FINISH_REASON_UNSPECIFIED
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Generator(Protocol):
    """What the pipeline needs from a language model service (``remote_gen.GrpcGenerator`` is the real one)."""

    async def count_tokens(self, texts: Sequence[str], model: str) -> list[int]: ...

    def stream(
        self, messages: list[dict[str, str]], regex: str, opts: AskOptions
    ) -> AsyncIterator[GenPiece]: ...


@dataclass
class AskResult:
    """The outcome of one question (maps 1:1 onto ``AskResponse`` + ``AskTrace``)."""

    question: str
    search_query: str = ""  # the rewritten question actually searched ("" until rewritten)
    rewrite_strategy: str = "none"
    answer: str = ""
    abstained: bool = False
    abstain_reason: str = ""
    finish_reason: common_pb2.FinishReason.ValueType = common_pb2.FINISH_REASON_UNSPECIFIED
    retrieved: list[Hit] = field(default_factory=list)
    context: list[Hit] = field(default_factory=list)  # context[i] carries marker i + 1
    cited: list[int] = field(default_factory=list)  # markers cited by the final answer, in order
    sentences: list[AnswerSentence] = field(default_factory=list)  # all generated sentences, checked
    groundedness: float = 0.0
    support: float = 0.0
    threshold: float = 0.0
    prompt: str = ""
    retrieval_ms: float = 0.0
    generation_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    query_tokens: int = 0


@dataclass(frozen=True)
class TextDelta:
    """New answer text."""

    text: str


@dataclass(frozen=True)
class Withdraw:
    """Text streamed so far is withdrawn (the answer failed its groundedness check)."""


@dataclass(frozen=True)
class Done:
    """The last event: the whole result."""

    result: AskResult


Event = TextDelta | Withdraw | Done


def answer_regex(
    markers: Sequence[int], max_sentences: int = MAX_SENTENCES, max_chars: int = MAX_SENTENCE_CHARS
) -> str:
    """The constraint: the abstention text, or sentences that each end in markers from ``markers``.

    ``answer_regex([1, 2], 2)`` accepts ``"Cats purr [1]. Dogs bark [2][1]."`` and ``"Not in the
    documents."``, never ``"... [3]."`` (3 was not in the context).
    """
    if not markers:
        raise ValueError("answer_regex needs at least one context marker")
    nums = "|".join(str(m) for m in markers)
    # Body: printable ASCII without "[", "\\" and "]" (0x20-0x5A, 0x5E-0x7E), so markers come only from the tail.
    sentence = rf"[A-Za-z0-9][ -Z^-~]{{0,{max_chars}}} (\[({nums})\])+\."
    abstain = ABSTAIN_TEXT.replace(".", r"\.")
    return rf"{abstain}|{sentence}( {sentence}){{0,{max_sentences - 1}}}"


def context_block(context: Sequence[Hit]) -> str:
    """``[1] Title: text`` paragraphs, the way the prompt shows the passages."""
    return "\n\n".join(
        f"[{i}] {h.title + ': ' if h.title else ''}{' '.join(h.text.split())}"
        for i, h in enumerate(context, 1)
    )


def build_messages(question: str, context: Sequence[Hit]) -> list[dict[str, str]]:
    """The chat prompt: system instructions, then passages and question."""
    user = f"Passages:\n\n{context_block(context)}\n\nQuestion: {question}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def fit_context(hits: Sequence[Hit], lengths: Sequence[int], budget: int) -> list[Hit]:
    """Hits in rank order whose token lengths fit ``budget`` together; a hit too long is skipped.

    When not even the best hit fits alone, it is cut to its first ``budget / length`` share of words
    (tokens per word vary, so the share is taken with a 10 % margin), rather than answering from nothing.
    """
    out, used = [], 0
    for h, n in zip(hits, lengths):
        if used + n <= budget:
            out.append(h)
            used += n
    if not out and hits and lengths[0] > 0:
        words = hits[0].text.split()
        keep = int(len(words) * budget / lengths[0] * 0.9)
        if keep > 0:
            out.append(replace(hits[0], text=" ".join(words[:keep])))
    return out


def default_threshold(col: Collection) -> float:
    """The collection's calibrated support threshold, or ``UNCALIBRATED`` (never abstain on support)."""
    return float(col.manifest.get(MANIFEST_KEY, {}).get("support_threshold", UNCALIBRATED))


def support_score(col: Collection, query_vec: np.ndarray, hits: Sequence[Hit]) -> float:
    """Best cosine between the question vector (D,) and the retrieved passages (0 when none)."""
    if not hits:
        return 0.0
    vecs = col.embedder.embed([embed_text(h.title, "", h.text) for h in hits])  # (k, D), cached by content
    return float(np.max(vecs @ query_vec))


def retrieve(col: Collection, question: str, opts: AskOptions) -> tuple[list[Hit], float]:
    """Top-k hits and the support score (blocking: run it in a thread from async code)."""
    qv = col.embedder.inner.embed([question])  # (1, D)
    use_vec = qv if opts.mode != "bm25" else None
    hits = col.search(
        question, mode=opts.mode, k=opts.k, filters=opts.filters, alpha=opts.alpha, query_vector=use_vec
    )
    return hits, support_score(col, qv[0], hits)


def _word_counts(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


async def ask_events(
    col: Collection, question: str, opts: AskOptions, generator: Generator | None
) -> AsyncIterator[Event]:
    """The pipeline as a stream of ``TextDelta`` / ``Withdraw`` events, then one ``Done``.

    Raises:
        ValueError: empty question, bad options, or ``generative`` mode without a generator.
    """
    if not question.strip():
        raise ValueError("question must not be empty")
    opts.check()
    if opts.answer_mode == "generative" and generator is None:
        raise ValueError(
            "answer mode 'generative' needs an InferenceService (start the RetrieverService with --inference "
            "HOST:PORT), or ask with answer mode 'extractive'"
        )
    res = AskResult(question=question)
    rw = await rewrite_query(opts.history, question, opts.rewrite, generator, opts)
    res.search_query, res.rewrite_strategy = rw.query, rw.strategy
    query = rw.query
    t0 = time.perf_counter()
    res.retrieved, res.support = await asyncio.to_thread(retrieve, col, query, opts)
    res.retrieval_ms = (time.perf_counter() - t0) * 1000
    res.query_tokens = len(query.split()) if opts.mode != "bm25" else 0
    res.threshold = opts.abstain_threshold if opts.abstain_threshold is not None else default_threshold(col)
    if not res.retrieved:
        reason = "no chunk was retrieved"
    elif res.support < res.threshold:
        reason = f"support {res.support:.3f} < threshold {res.threshold:.3f}"
    else:
        texts = [f"[{i}] {h.title}: {h.text}" for i, h in enumerate(res.retrieved, 1)]
        if opts.answer_mode == "generative" and generator is not None:
            lengths = await generator.count_tokens(texts, opts.model)
        else:
            lengths = _word_counts(texts)
        res.context = fit_context(res.retrieved, lengths, opts.max_context_tokens)
        reason = (
            "" if res.context else f"no retrieved chunk fits max_context_tokens={opts.max_context_tokens}"
        )
    if reason:
        yield TextDelta(ABSTAIN_TEXT)
        yield Done(_abstain(res, reason))
        return
    markers = {i: h.text for i, h in enumerate(res.context, 1)}
    t1 = time.perf_counter()
    if opts.answer_mode == "extractive":
        passages = [(i, h.text) for i, h in enumerate(res.context, 1)]
        raw = await asyncio.to_thread(extract_answer, query, passages, col.embedder.embed)
        res.finish_reason = common_pb2.FINISH_REASON_STOP
        res.prompt = f"extractive: {query}"
        pieces: AsyncIterator[GenPiece] = _one(GenPiece(raw, common_pb2.FINISH_REASON_STOP))
    else:
        assert generator is not None
        messages = build_messages(query, res.context)
        res.prompt = "\n\n".join(f"<{m['role']}>\n{m['content']}" for m in messages)
        pieces = generator.stream(
            messages, answer_regex(list(markers), max_chars=opts.max_sentence_chars), opts
        )
    raw, shown = "", ""
    async for piece in pieces:
        raw += piece.text
        if piece.finish_reason:
            res.finish_reason = piece.finish_reason
            res.prompt_tokens, res.completion_tokens = piece.prompt_tokens, piece.completion_tokens
        if opts.drop_unsupported:  # release whole sentences once checked (the last one may be unfinished)
            done = [
                s for s in score_sentences(raw, markers, opts.min_groundedness)[:-1] if s.text.endswith(".")
            ]
            new = "".join(s.text for s in done if s.supported)
        else:
            new = raw
        if len(new) > len(shown):
            yield TextDelta(new[len(shown) :])
            shown = new
    res.generation_ms = (time.perf_counter() - t1) * 1000
    res.sentences = score_sentences(raw, markers, opts.min_groundedness)
    kept = [s for s in res.sentences if s.supported or not opts.drop_unsupported]
    res.groundedness = overall_groundedness(res.sentences)
    if raw.strip() == ABSTAIN_TEXT:
        reason = "the model found no answer in the passages"
    elif not any(s.supported for s in res.sentences):
        reason = (
            f"no sentence reaches groundedness {opts.min_groundedness:.2f} (overall {res.groundedness:.3f})"
        )
    if reason:
        if shown and shown != ABSTAIN_TEXT:
            yield Withdraw()
        if shown != ABSTAIN_TEXT:
            yield TextDelta(ABSTAIN_TEXT)
        yield Done(_abstain(res, reason))
        return
    res.answer = "".join(s.text for s in kept) if opts.drop_unsupported else raw
    if len(res.answer) > len(shown):
        yield TextDelta(res.answer[len(shown) :])
    res.cited = list(dict.fromkeys(m for s in kept for m in s.markers))
    yield Done(res)


async def _one(piece: GenPiece) -> AsyncIterator[GenPiece]:
    yield piece


def _abstain(res: AskResult, reason: str) -> AskResult:
    res.abstained, res.abstain_reason, res.answer, res.cited = True, reason, ABSTAIN_TEXT, []
    return res


async def ask(col: Collection, question: str, opts: AskOptions, generator: Generator | None) -> AskResult:
    """Run the pipeline to the end and return its result (``result.answer`` == ``join_stream`` of it)."""
    async for ev in ask_events(col, question, opts, generator):
        if isinstance(ev, Done):
            return ev.result
    raise AssertionError("ask_events ended without a Done event")  # pragma: no cover


def join_stream(texts_and_withdrawals: Sequence[Any]) -> str:
    """The answer a stream client shows: concatenated text, restarted after each withdrawal.

    Items are strings (text) or ``None`` (a withdrawal): ``join_stream(["a", "b", None, "c"])`` -> ``"c"``.
    """
    out = ""
    for item in texts_and_withdrawals:
        out = "" if item is None else out + item
    return out
