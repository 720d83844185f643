"""The shared vocabulary of every rail: a ``Finding``, a ``RailResult``, the ``Rail`` protocol, and helpers.

A rail is any object with a ``name`` and ``apply(text, chunks=()) -> RailResult``; it is pure (text in,
decision out), so the inference server and the RAG pipeline can call it as middleware without importing
anything of ours but this subpackage. ``timed`` wraps a rail's core check so every result carries its
latency, and ``redact_spans`` replaces spans by typed placeholders while keeping every other character.

What it deliberately does not do: decide policy (each rail does), or know about gRPC / HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Action = Literal["allow", "redact", "block"]
ACTIONS: tuple[str, ...] = ("allow", "redact", "block")


@dataclass(frozen=True)
class Finding:
    """One thing a rail found.

    Attributes:
        kind: What was found, e.g. ``"email"``, ``"override"``, ``"unsupported_sentence"``.
        start: Start offset of the span in the checked text (0 for whole-text findings).
        end: End offset (exclusive).
        score: Strength of the evidence in [0, 1] (1.0 for checksum-verified PII).
        detail: Human-readable explanation. Never contains the raw secret / PII value.
    """

    kind: str
    start: int
    end: int
    score: float = 1.0
    detail: str = ""


@dataclass(frozen=True)
class RailResult:
    """The decision of a rail (or of a whole pipeline stage).

    Attributes:
        allowed: False only when ``action == "block"``.
        action: ``allow`` (nothing to do), ``redact`` (pass ``redacted_text`` on) or ``block``.
        redacted_text: The text to pass on: the input with any redaction applied (the input itself otherwise).
        findings: What was found, in text order.
        latency_ms: Wall time of the check in milliseconds.
        rail: Name of the rail (``"input"`` / ``"output"`` for a pipeline stage).
        score: The rail's score (injection risk, unsupported fraction, ...; 0.0 when it has none).
        per_rail: For a pipeline stage, the result of each rail that ran, in order.
    """

    allowed: bool
    action: Action
    redacted_text: str
    findings: tuple[Finding, ...] = ()
    latency_ms: float = 0.0
    rail: str = ""
    score: float = 0.0
    per_rail: tuple[RailResult, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (findings and per-rail results included)."""
        return asdict(self)


class Rail(Protocol):
    """What the pipeline needs of a rail. ``chunks`` are the retrieved passages (used by groundedness only)."""

    name: str

    def apply(self, text: str, chunks: Sequence[str] = ()) -> RailResult: ...


def check_action(value: str, accepted: Sequence[str]) -> Action:
    """Validate a configured action name.

    >>> check_action("block", ("redact", "block"))
    'block'
    """
    if value not in accepted:
        raise ValueError(f"unknown guardrail action {value!r}; accepted: {', '.join(accepted)}")
    return value  # type: ignore[return-value]


def timed(name: str, check: Callable[[], tuple[Action, str, list[Finding], float]]) -> RailResult:
    """Run ``check`` (returning action, text to pass on, findings, score) and wrap it in a timed RailResult."""
    t0 = time.perf_counter()
    action, out_text, findings, score = check()
    latency = (time.perf_counter() - t0) * 1000.0
    findings = sorted(findings, key=lambda f: (f.start, f.end))
    return RailResult(
        allowed=action != "block",
        action=action,
        redacted_text=out_text,
        findings=tuple(findings),
        latency_ms=latency,
        rail=name,
        score=score,
    )


def redact_spans(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """Replace non-overlapping ``(start, end, placeholder)`` spans; every other character is kept as is.

    >>> redact_spans("mail bob@x.org now", [(5, 14, "[EMAIL]")])
    'mail [EMAIL] now'
    """
    out: list[str] = []
    pos = 0
    for start, end, placeholder in sorted(spans):
        if start < pos:
            raise ValueError(f"overlapping redaction span ({start}, {end}) starts before {pos}")
        out.append(text[pos:start])
        out.append(placeholder)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def require_text(text: object) -> str:
    """Rails accept ``str`` only; anything else is a caller bug worth a clear message."""
    if not isinstance(text, str):
        raise ValueError(f"guardrails check text (str), got {type(text).__name__}")
    return text
