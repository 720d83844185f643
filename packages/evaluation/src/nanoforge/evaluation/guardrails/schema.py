"""Output schema validation: the model's answer must be JSON that conforms to a JSON Schema (jsonschema).

The answer may be bare JSON or wrapped in one Markdown code fence (```` ```json ... ``` ````), which models
often add; anything else around the JSON is a violation. Every schema error is reported with its JSON path.

What it deliberately does not do: repair invalid JSON or coerce types; constrained decoding on the server
is the way to make invalid outputs impossible, this rail is the check that it worked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema

from nanoforge.evaluation.guardrails.base import Action, Finding, RailResult, check_action, timed

_FENCE = re.compile(r"\A\s*```(?:json|JSON)?[ \t]*\n(.*?)\n?```\s*\Z", re.DOTALL)


def extract_json(text: str) -> Any:
    """Parse ``text`` as JSON, unwrapping one Markdown code fence; raises ``ValueError`` when it is not JSON.

    >>> extract_json('```json\\n{"a": 1}\\n```')
    {'a': 1}
    """
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"output is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


class JsonSchemaRail:
    """Block outputs that are not JSON or do not conform to ``schema``.

    Args:
        schema: A JSON Schema (checked against its metaschema at construction).
        name: Name reported in results.
        action: ``block`` (default) or ``allow`` (only report).
    """

    def __init__(self, schema: Mapping[str, Any], action: str = "block", name: str = "json_schema") -> None:
        if not isinstance(schema, Mapping):
            raise ValueError(f"json_schema needs a JSON Schema object, got {type(schema).__name__}")
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid JSON Schema: {exc.message}") from None
        self.validator = cls(schema)
        self.action: Action = check_action(action, ("block", "allow"))
        self.name = name

    def apply(self, text: str, chunks: Sequence[str] = ()) -> RailResult:
        """Validate ``text``; ``chunks`` is ignored (part of the common rail signature)."""

        def check() -> tuple[Action, str, list[Finding], float]:
            try:
                value = extract_json(text)
            except ValueError as exc:
                return self.action, text, [Finding("invalid_json", 0, len(text), 1.0, str(exc))], 1.0
            findings = [
                Finding("schema_violation", 0, len(text), 1.0, f"at {err.json_path}: {err.message}")
                for err in sorted(self.validator.iter_errors(value), key=lambda e: e.json_path)
            ]
            return (self.action if findings else "allow"), text, findings, float(bool(findings))

        return timed(self.name, check)
