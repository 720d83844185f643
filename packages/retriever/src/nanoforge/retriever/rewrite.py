"""Conversational query rewriting: earlier turns + a follow-up question -> one standalone search query.

Strategies (``REWRITERS``, chosen by ``AskOptions.rewrite``):

- ``none``: the question as it is.
- ``heuristic`` (the default; no model): a question is a *follow-up* when it contains an anaphor
  ("it", "they", "this", ...) or fewer than two content words. A follow-up gets the content words of the
  last user turn that it does not already contain appended, in their original spelling (so names keep
  their case): ``"when was it founded?"`` after ``"Tell me about the Acme Corporation"`` ->
  ``"when was it founded? Acme Corporation"``. When that turn is itself a follow-up, the user turn before
  it is added too (at most ``MAX_TURNS`` user turns, ``MAX_ADDED_WORDS`` words).
- ``llm``: the InferenceService model (through ``rag.Generator``, the same gRPC client as the answer)
  writes the query, constrained by ``QUERY_REGEX`` to one line of printable ASCII. The line is rejected
  (and ``heuristic`` used) when generation fails, or when it shares no content word with the question or
  the history (an off-topic line from a weak model would retrieve nothing useful).

Limits of ``heuristic``, deliberately: it reads user turns only (an entity that only the assistant named is
not carried over), it cannot tell which of several earlier subjects "it" means (it appends all of the last
turn's content words), and it never removes words from the question.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nanoforge.api.common.v1 import common_pb2
from nanoforge.retriever.grounding import STOPWORDS, content_words

if TYPE_CHECKING:
    from nanoforge.retriever.rag import AskOptions, Generator

#: Words whose referent lies in an earlier turn; their presence makes a question a follow-up.
ANAPHORS = frozenset(
    [
        "it",
        "its",
        "they",
        "them",
        "their",
        "theirs",
        "this",
        "that",
        "these",
        "those",
        "he",
        "she",
        "him",
        "her",
        "his",
        "there",
    ]
)
#: Request verbs that name no subject ("tell me about X"): never appended.
REQUEST_WORDS = frozenset(["tell", "explain", "describe", "know", "show", "give", "want", "please", "say"])
#: Most user turns read back, and most words appended, by the heuristic.
MAX_TURNS, MAX_ADDED_WORDS = 3, 12
#: Most characters of a model-written query, and its new-token budget.
MAX_QUERY_CHARS, MAX_QUERY_TOKENS = 160, 48
#: One line of printable ASCII starting with a letter or digit (no newline can be generated).
QUERY_REGEX = rf"[A-Za-z0-9][ -~]{{0,{MAX_QUERY_CHARS - 1}}}"
ROLES = ("system", "user", "assistant", "tool")

REWRITE_PROMPT = (
    "Rewrite the user's last question as one standalone search query that names what it refers to, "
    "using the conversation. Reply with the query only, on one line."
)

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"history message role {self.role!r} is not one of {', '.join(ROLES)}")


@dataclass(frozen=True)
class Rewrite:
    """The searched query and how it was obtained (``AskTrace.rewrite_strategy``)."""

    query: str
    strategy: str


def is_follow_up(question: str) -> bool:
    """True when ``question`` has an anaphor or fewer than two content words."""
    words = _WORD.findall(question.lower())
    return any(w in ANAPHORS for w in words) or len(content_words(question)) < 2


def _salient(text: str, skip: set[str]) -> list[str]:
    """Content words of ``text`` in order and original spelling, minus those (lower-cased) in ``skip``."""
    out = []
    for w in _WORD.findall(text):
        low = w.lower()
        if low in STOPWORDS or low in REQUEST_WORDS or low in skip or w.isdigit():
            continue
        skip.add(low)
        out.append(w)
    return out


def heuristic_rewrite(history: Sequence[Turn], question: str) -> Rewrite:
    """Append the missing content words of the last user turn(s) to a follow-up question (see module doc)."""
    users = [t.content for t in history if t.role == "user" and t.content.strip()]
    if not users or not is_follow_up(question):
        return Rewrite(question, "none")
    skip = set(content_words(question))
    added: list[str] = []
    for text in reversed(users[-MAX_TURNS:]):
        added += _salient(text, skip)
        if not is_follow_up(text):
            break
    added = added[:MAX_ADDED_WORDS]
    if not added:
        return Rewrite(question, "none")
    return Rewrite(f"{question.strip()} {' '.join(added)}", "heuristic")


def rewrite_messages(history: Sequence[Turn], question: str) -> list[dict[str, str]]:
    """The chat prompt of the ``llm`` strategy: instructions, then the conversation as one user message."""
    lines = [f"{t.role}: {' '.join(t.content.split())}" for t in history if t.role in ("user", "assistant")]
    convo = "\n".join([*lines, f"user: {' '.join(question.split())}"])
    return [
        {"role": "system", "content": REWRITE_PROMPT},
        {"role": "user", "content": f"Conversation:\n{convo}\n\nStandalone query:"},
    ]


async def llm_rewrite(
    history: Sequence[Turn], question: str, generator: Generator | None, opts: AskOptions
) -> Rewrite:
    """The model's one-line query, or ``heuristic_rewrite`` (strategy says why) when it is unusable."""
    if not history:
        return Rewrite(question, "none")
    if generator is None:
        return _fallback(history, question, "no InferenceService configured")
    sampling = common_pb2.SamplingParams(temperature=0.0, max_new_tokens=MAX_QUERY_TOKENS)
    text = ""
    try:
        async for piece in generator.stream(
            rewrite_messages(history, question), QUERY_REGEX, replace(opts, sampling=sampling)
        ):
            text += piece.text
    except (ConnectionError, ValueError, TimeoutError) as err:
        return _fallback(history, question, f"{type(err).__name__}: {err}"[:200])
    line = " ".join(text.split())
    if not line:
        return _fallback(history, question, "empty query")
    known = set(content_words(question)) | {w for t in history for w in content_words(t.content)}
    if not known & set(content_words(line)):
        return _fallback(
            history, question, f"query {line[:60]!r} shares no content word with the conversation"
        )
    return Rewrite(line, "llm")


def _fallback(history: Sequence[Turn], question: str, why: str) -> Rewrite:
    r = heuristic_rewrite(history, question)
    return Rewrite(r.query, f"heuristic (llm failed: {why})")


async def _none(
    history: Sequence[Turn], question: str, generator: Generator | None, opts: AskOptions
) -> Rewrite:
    return Rewrite(question, "none")


async def _heuristic(
    history: Sequence[Turn], question: str, generator: Generator | None, opts: AskOptions
) -> Rewrite:
    return heuristic_rewrite(history, question)


RewriteFn = Callable[[Sequence[Turn], str, "Generator | None", "AskOptions"], Awaitable[Rewrite]]

#: Strategy name -> async rewriter(history, question, generator, opts).
REWRITERS: dict[str, RewriteFn] = {"none": _none, "heuristic": _heuristic, "llm": llm_rewrite}


async def rewrite_query(
    history: Sequence[Turn], question: str, strategy: str, generator: Generator | None, opts: AskOptions
) -> Rewrite:
    """Run the named strategy (``ValueError`` for an unknown name)."""
    fn = REWRITERS.get(strategy)
    if fn is None:
        raise ValueError(f"unknown query rewrite strategy {strategy!r}; known: {', '.join(REWRITERS)}")
    return await fn(history, question, generator, opts)
