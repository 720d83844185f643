"""A guardrail pipeline: input rails run on the prompt, output rails on the model's answer.

Rails of a stage run in order; a redaction is passed on (later rails see ``[EMAIL]``, not the address),
and the first ``block`` stops the stage. The stage result combines the rails: action ``block`` if any
blocked, else ``redact`` if any redacted, else ``allow``; all findings; the total latency; and the
per-rail results (each with its own latency). A finding's offsets index the text its rail saw (after
earlier redactions). Built from a mapping (or a YAML file) such as::

    input:
      - {type: pii}                       # redact e-mails, phones, cards, IBANs, secrets
      - {type: injection, threshold: 0.5}
    output:
      - {type: pii}
      - {type: groundedness, threshold: 0.6}

Middleware use, e.g. around a RAG answer::

    rails = Pipeline.from_file("rails.yaml")
    checked = rails.check_input(question)
    if not checked.allowed: return refuse(checked.findings)
    answer = generate(checked.redacted_text, chunks)
    out = rails.check_output(answer, chunks)

What it deliberately does not do: call a model, or know the transport (gRPC / HTTP) it sits in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nanoforge.evaluation.guardrails.base import Action, Finding, Rail, RailResult, require_text
from nanoforge.evaluation.guardrails.registry import build_rail

STAGES = ("input", "output")


class Pipeline:
    """Input and output rails, applied in order.

    Args:
        input_rails: Rails for the user's prompt (PII, injection, deny-lists, ...).
        output_rails: Rails for the model's answer (PII, schema, groundedness, ...).
    """

    def __init__(self, input_rails: Sequence[Rail] = (), output_rails: Sequence[Rail] = ()) -> None:
        self.input_rails = list(input_rails)
        self.output_rails = list(output_rails)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Pipeline:
        """Build from ``{"input": [spec, ...], "output": [spec, ...]}`` (specs as in ``build_rail``)."""
        if not isinstance(config, Mapping):
            raise ValueError(
                f"a guardrails config is a mapping with keys {STAGES}, got {type(config).__name__}"
            )
        unknown = sorted(set(config) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown guardrails stage(s) {unknown}; accepted: {', '.join(STAGES)}")
        stages = {}
        for stage in STAGES:
            specs = config.get(stage) or []
            if not isinstance(specs, list):
                raise ValueError(f"guardrails stage {stage!r} must be a list of rail specs, got {specs!r}")
            stages[stage] = [build_rail(spec) for spec in specs]
        return cls(stages["input"], stages["output"])

    @classmethod
    def from_file(cls, path: str | Path) -> Pipeline:
        """Build from a YAML (or JSON) file holding the config mapping."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_config(yaml.safe_load(fh) or {})

    def check_input(self, text: str) -> RailResult:
        """Run the input rails on a prompt."""
        return run_rails("input", self.input_rails, text, ())

    def check_output(self, text: str, chunks: Sequence[str] = ()) -> RailResult:
        """Run the output rails on an answer; ``chunks`` are the retrieved passages it may cite."""
        return run_rails("output", self.output_rails, text, chunks)


def run_rails(stage: str, rails: Sequence[Rail], text: str, chunks: Sequence[str]) -> RailResult:
    """Apply ``rails`` in order, passing redactions on and stopping at the first block."""
    current = require_text(text)
    t0 = time.perf_counter()
    results: list[RailResult] = []
    for rail in rails:
        result = rail.apply(current, chunks)
        results.append(result)
        current = result.redacted_text
        if result.action == "block":
            break
    actions = {r.action for r in results}
    action: Action = "block" if "block" in actions else "redact" if "redact" in actions else "allow"
    findings: list[Finding] = [f for r in results for f in r.findings]
    return RailResult(
        allowed=action != "block",
        action=action,
        redacted_text=current,
        findings=tuple(findings),
        latency_ms=(time.perf_counter() - t0) * 1000.0,
        rail=stage,
        score=max((r.score for r in results), default=0.0),
        per_rail=tuple(results),
    )
