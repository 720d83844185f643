"""Answer checking without a model: content words, sentence splitting, groundedness, extractive answers.

Groundedness of an answer sentence = the share of its content words (lower-cased ``\\w+`` tokens that are
not stopwords or bare numbers) that occur in the chunks it cites::

    groundedness("Cats purr at night [1].", ["A cat purrs and hunts mice at night."])  -> 0.333...
    # content words {cats, purr, night}; only "night" is in the chunk (no stemming: "cats" != "cat")

Why token containment and not embedding cosine: a hallucinated sentence is usually *on topic* (it reuses
the subject of the passage and invents the facts), so its cosine to the passage stays high; containment
drops as soon as the sentence brings in words the sources do not have. It is also deterministic, free, and
readable in a trace. Its blind spots: paraphrases score low (false alarms) and a sentence that recombines
source words into a false claim scores high. The threshold that marks a sentence unsupported is a request
option (default ``DEFAULT_MIN_GROUNDEDNESS``).

Extractive answering (``extract_answer``), the classic baseline reader: split the top context chunks into
sentences, score each by cosine similarity to the question under the collection's embedder, and answer
with the best ones, each cited with its chunk's marker. It cannot say anything the sources do not say.

What it deliberately does not do: stemming, NLI-style entailment, or cross-encoder re-ranking.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: A sentence whose groundedness is below this is "unsupported" unless the request says otherwise.
DEFAULT_MIN_GROUNDEDNESS = 0.5

_WORD = re.compile(r"\w+")
_MARKER = re.compile(r"\s*\[(\d+)\]")
#: One answer sentence: text up to and including its run of "[n]" markers and an optional full stop.
_CITED_SENTENCE = re.compile(r"[^\[\]]*?(?:\s*\[\d+\])+\.?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")

_STOPWORDS_TEXT = """a an the and or but if then else of to in on at by for with from as is are was were be been being
    it its this that these those there here he she they them his her their we you i me my our your
    not no do does did done has have had having will would can could should may might must shall
    which who whom whose what when where why how than so such very also into over under about after
    before between during through up down out off only own same other some any each all both few more
    most s t"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def content_words(text: str) -> list[str]:
    """Lower-cased words minus stopwords and bare numbers: ``"The cat sat [1]"`` -> ``["cat", "sat"]``."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS and not w.isdigit()]


def groundedness(sentence: str, sources: Sequence[str]) -> float:
    """Share of the sentence's content words found in ``sources`` (0 when it has none or no sources)."""
    words = content_words(_MARKER.sub(" ", sentence))
    if not words or not sources:
        return 0.0
    vocab = {w for s in sources for w in _WORD.findall(s.lower())}
    return sum(w in vocab for w in words) / len(words)


@dataclass(frozen=True)
class AnswerSentence:
    """One sentence of an answer, as the client sees it.

    Attributes:
        text: the sentence including its "[n]" markers.
        markers: the marker numbers it cites, in order, without repeats.
        groundedness: ``groundedness(text, cited chunk texts)``; 0 when it cites nothing.
        supported: ``groundedness >= min_groundedness``.
    """

    text: str
    markers: tuple[int, ...]
    groundedness: float
    supported: bool


def split_cited(answer: str) -> list[tuple[str, tuple[int, ...]]]:
    """Cut an answer into sentences that end with their markers; a trailing uncited tail is its own piece.

    ``"A b [1]. C [2][1]. tail"`` -> ``[("A b [1].", (1,)), (" C [2][1].", (2, 1)), (" tail", ())]``.
    """
    out: list[tuple[str, tuple[int, ...]]] = []
    pos = 0
    for m in _CITED_SENTENCE.finditer(answer):
        if m.start() != pos or not m.group():
            continue
        nums = tuple(dict.fromkeys(int(n) for n in _MARKER.findall(m.group())))
        out.append((m.group(), nums))
        pos = m.end()
    if answer[pos:].strip():
        out.append((answer[pos:], ()))
    return out


def score_sentences(
    answer: str, marker_text: dict[int, str], min_groundedness: float = DEFAULT_MIN_GROUNDEDNESS
) -> list[AnswerSentence]:
    """Every sentence of ``answer`` with its groundedness against the chunks its markers name."""
    out = []
    for text, markers in split_cited(answer):
        sources = [marker_text[m] for m in markers if m in marker_text]
        g = groundedness(text, sources)
        out.append(AnswerSentence(text, markers, g, g >= min_groundedness))
    return out


def overall_groundedness(sentences: Sequence[AnswerSentence]) -> float:
    """Content-word-weighted mean groundedness (0 for an empty answer)."""
    weights = [max(1, len(content_words(s.text))) for s in sentences]
    if not sentences:
        return 0.0
    return float(sum(w * s.groundedness for w, s in zip(weights, sentences)) / sum(weights))


def split_sentences(text: str) -> list[str]:
    """Plain sentence splitting on ``. ! ?`` followed by a capital, digit or quote."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def extract_answer(
    question: str,
    passages: Sequence[tuple[int, str]],
    embed: Callable[[Sequence[str]], np.ndarray],
    *,
    max_sentences: int = 2,
    max_passages: int = 3,
) -> str:
    """The ``max_sentences`` passage sentences closest to the question, each followed by its marker.

    Args:
        question: the question.
        passages: (marker, text) of the context chunks, best first; the first ``max_passages`` are read.
        embed: texts -> (N, D) L2-normalised vectors (the collection's embedder).
        max_sentences: sentences in the answer.
        max_passages: chunks searched for sentences.

    Returns:
        ``"<sentence> [n]. <sentence> [m]."`` in passage order, or "" when the passages have no sentence.
    """
    cands = [(m, i, s) for m, text in passages[:max_passages] for i, s in enumerate(split_sentences(text))]
    if not cands:
        return ""
    vecs = embed([question] + [s for _, _, s in cands])  # (1 + N, D)
    sims = vecs[1:] @ vecs[0]  # (N,)
    best = sorted(np.argsort(-sims, kind="stable")[:max_sentences].tolist(), key=lambda j: (j,))
    parts = []
    for j in best:
        marker, _, sent = cands[j]
        parts.append(f"{sent.rstrip('.')} [{marker}].")
    return " ".join(parts)
