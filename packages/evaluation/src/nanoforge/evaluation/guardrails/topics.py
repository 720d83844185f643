"""Topic deny-lists: configurable keyword / phrase lists matched case-insensitively on word boundaries.

Each topic is a list of phrases. A phrase matches as whole words (``"gun"`` does not match ``"begun"``),
whitespace inside a phrase matches any run of whitespace, and a trailing ``*`` allows any word ending
(``"bomb*"`` matches ``bombs`` and ``bombing``). Matching is a single compiled alternation per topic.

What it deliberately does not do: semantic topic classification (a paraphrase without the listed words
passes) or allow-lists; pair it with a classifier when recall matters more than transparency.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from nanoforge.evaluation.guardrails.base import Action, Finding, RailResult, check_action, timed


def phrase_pattern(phrase: str) -> str:
    r"""The regex of one deny-list phrase.

    >>> phrase_pattern("pipe  bomb*")
    '(?<!\\w)pipe\\s+bomb\\w*(?!\\w)'
    """
    phrase = phrase.strip()
    if not phrase or phrase == "*":
        raise ValueError(f"deny-list phrase must contain a word, got {phrase!r}")
    wildcard = phrase.endswith("*")
    words = phrase.rstrip("*").split()
    body = r"\s+".join(re.escape(w) for w in words)
    tail = r"\w*" if wildcard else ""
    return rf"(?<!\w){body}{tail}(?!\w)"


class DenyListRail:
    """Block texts that mention a denied topic.

    Args:
        topics: ``{topic: [phrase, ...]}``; a phrase may end in ``*`` (any word ending).
        action: ``block`` (default) or ``allow`` (only report).
        name: Name reported in results.
    """

    def __init__(
        self, topics: Mapping[str, Sequence[str]], action: str = "block", name: str = "deny_topics"
    ) -> None:
        if not isinstance(topics, Mapping) or not topics:
            raise ValueError(f"deny_topics needs a non-empty {{topic: [phrases]}} mapping, got {topics!r}")
        self.patterns: dict[str, re.Pattern[str]] = {}
        for topic, phrases in topics.items():
            if isinstance(phrases, str) or not phrases:
                raise ValueError(f"topic {topic!r} needs a non-empty list of phrases, got {phrases!r}")
            self.patterns[topic] = re.compile("|".join(phrase_pattern(p) for p in phrases), re.IGNORECASE)
        self.action: Action = check_action(action, ("block", "allow"))
        self.name = name

    def apply(self, text: str, chunks: Sequence[str] = ()) -> RailResult:
        """Check ``text``; ``chunks`` is ignored (part of the common rail signature)."""

        def check() -> tuple[Action, str, list[Finding], float]:
            findings = [
                Finding(topic, m.start(), m.end(), 1.0, f"topic {topic!r}: {m.group(0)!r}")
                for topic, pattern in self.patterns.items()
                for m in pattern.finditer(text)
            ]
            return (self.action if findings else "allow"), text, findings, float(bool(findings))

        return timed(self.name, check)
