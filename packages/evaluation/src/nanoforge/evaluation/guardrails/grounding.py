"""Groundedness of RAG answers: every answer sentence must be covered by the chunks it cites.

A sentence's content words (lower-cased, stop words dropped, plural ``s`` folded, ``1,200`` -> ``1200``) are
compared with those of its cited chunks (``[1]``, ``[2, 3]`` markers, 1-based; no marker = all chunks).
Coverage is the ROUGE-1-recall-style fraction of the sentence's content words found in the chunks; a
sentence is supported when coverage >= ``threshold`` AND every number it states appears in the chunks (a
changed figure is the classic hallucination that word overlap alone misses). Sentences without content
words ("Sure.") are skipped. The rail reports each unsupported sentence with its coverage.

What it deliberately does not do: entailment. "X is not Y" is covered by a chunk saying "X is Y"; an NLI
model is the next step when negations matter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from nanoforge.evaluation.guardrails.base import Action, Finding, RailResult, check_action, timed

STOP_WORDS = frozenset(
    re.split(
        r"\s+",
        """
    a an the and or but if then else of to in on at by for with from into onto over under about as is are
    was were be been being am do does did done have has had having it its it's this that these those there
    here which who whom whose what when where why how not no nor so than too very can could may might must
    shall should will would i you he she we they me him her us them my your his our their also just only
    such any all each both either neither some most more many much other another same own up down out off
    again further once yes per via according based source sources document documents context passage
    passages answer chunk chunks cited sure okay ok certainly course indeed well however therefore thus
    overall summary hope help helps glad happy great
""".strip(),
    )
)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+(?=\s|$)|(?:\.\d+[^.!?\n]*)+[.!?]*|$)", re.MULTILINE)
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_WORD = re.compile(r"[a-z0-9]+(?:\.\d+)?")


@functools.lru_cache(maxsize=4096)
def content_words(text: str) -> frozenset[str]:
    """Normalised content words of ``text`` (cached: chunks are compared with every sentence).

    >>> sorted(content_words("The towers were built in 1,889 [2]."))
    ['1889', 'built', 'tower']
    """
    text = _CITATION.sub(" ", text.lower())
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    out = set()
    for w in _WORD.findall(text.replace("'s", "")):
        if w in STOP_WORDS:
            continue
        if len(w) > 4 and w.endswith("ies"):
            w = w[:-3] + "y"
        elif len(w) > 3 and w.endswith("s") and not w.endswith("ss") and not w[-2].isdigit():
            w = w[:-1]
        out.add(w)
    return frozenset(out)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Spans of the sentences of ``text`` (decimal points do not end a sentence).

    >>> t = "Pi is 3.14 roughly. It is irrational!"
    >>> [t[a:b] for a, b in split_sentences(t)]
    ['Pi is 3.14 roughly.', 'It is irrational!']
    """
    spans = []
    for m in _SENTENCE.finditer(text):
        a, b = m.start(), m.end()
        while a < b and text[a].isspace():
            a += 1
        if a < b:
            spans.append((a, b))
    return spans


def _is_number(word: str) -> bool:
    return any(ch.isdigit() for ch in word)


def sentence_support(sentence: str, chunks: Sequence[str]) -> tuple[float, str]:
    """Coverage of one sentence by its cited chunks, and why it fails ("" when nothing stands out).

    >>> sentence_support("The bridge opened in 1937 [1].", ["The bridge was opened to traffic in 1937."])
    (1.0, '')
    >>> sentence_support("The bridge opened in 1938 [1].", ["The bridge was opened to traffic in 1937."])
    (0.666667, 'numbers not in the cited chunks: 1938')
    """
    words = content_words(sentence)
    cited = [int(i) for group in _CITATION.findall(sentence) for i in group.split(",")]
    bad = [i for i in cited if not 1 <= i <= len(chunks)]
    if bad:
        return 0.0, f"cites chunk(s) {bad} but only {len(chunks)} given"
    if not chunks:
        return 0.0, "no chunks given"
    source = [chunks[i - 1] for i in cited] if cited else list(chunks)
    chunk_words: set[str] = set().union(*(content_words(c) for c in source))
    coverage = round(len(words & chunk_words) / len(words), 6) if words else 1.0
    missing_numbers = sorted(w for w in words - chunk_words if _is_number(w))
    reason = f"numbers not in the cited chunks: {', '.join(missing_numbers)}" if missing_numbers else ""
    return coverage, reason


class GroundednessRail:
    """Block (or report) RAG answers with sentences their cited chunks do not support.

    Args:
        threshold: Minimum content-word coverage of a supported sentence (default 0.6).
        max_unsupported: Largest tolerated fraction of unsupported sentences (default 0: any blocks).
        action: ``block`` (default) or ``allow`` (only report).
        name: Name reported in results.
    """

    def __init__(
        self,
        threshold: float = 0.6,
        max_unsupported: float = 0.0,
        action: str = "block",
        name: str = "groundedness",
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"groundedness threshold must be in (0, 1], got {threshold!r}")
        if not 0.0 <= max_unsupported < 1.0:
            raise ValueError(f"max_unsupported must be in [0, 1), got {max_unsupported!r}")
        self.threshold = threshold
        self.max_unsupported = max_unsupported
        self.action: Action = check_action(action, ("block", "allow"))
        self.name = name

    def apply(self, text: str, chunks: Sequence[str] = ()) -> RailResult:
        """Check the answer ``text`` against the retrieved ``chunks`` (1-based in citation markers)."""

        def check() -> tuple[Action, str, list[Finding], float]:
            findings, checked = [], 0
            for a, b in split_sentences(text):
                sentence = text[a:b]
                if not content_words(sentence):
                    continue
                checked += 1
                coverage, reason = sentence_support(sentence, chunks)
                if coverage < self.threshold or reason:
                    low = f"coverage {coverage:.2f} < {self.threshold}" if coverage < self.threshold else ""
                    detail = "; ".join(part for part in (low, reason) if part)
                    findings.append(Finding("unsupported_sentence", a, b, 1.0 - coverage, detail))
            score = len(findings) / checked if checked else 0.0
            return (self.action if score > self.max_unsupported else "allow"), text, findings, round(score, 6)

        return timed(self.name, check)
