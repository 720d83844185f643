"""The hand-written labelled set of the guardrails, and each rail's precision / recall on it.

``data/guardrails_labelled.jsonl`` holds one example per line: ``rail`` (which rail it exercises), ``text``,
``label`` (1 = the rail should fire: PII present, injection, denied topic, schema violation, unsupported
answer), ``kinds`` (expected PII kinds), ``chunks`` (groundedness) and a ``note`` (``hard negative: ...``,
``known miss``). ``EVAL_RAILS`` is the configuration the set is scored with (the deny-list topics and the
output schema the examples refer to). ``evaluate`` runs every example through its rail and returns
confusion counts, precision, recall, latency and the misclassified ids per rail, and per PII kind.

What it deliberately does not do: claim generality. The set is small and was written by the same person
who tuned the heuristics, so these are in-sample numbers: a regression check, not a benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from nanoforge.evaluation.guardrails.base import Rail
from nanoforge.evaluation.guardrails.pii import DETECTORS
from nanoforge.evaluation.guardrails.registry import build_rail

#: The rail configuration the labelled set is scored with (one rail per ``rail`` value of the set).
EVAL_RAILS: dict[str, dict[str, Any]] = {
    "pii": {"type": "pii"},
    "injection": {"type": "injection", "threshold": 0.5},
    "deny_topics": {
        "type": "deny_topics",
        "topics": {
            "weapons": ["build a bomb", "make a bomb", "pipe bomb*", "ghost gun*", "nerve agent*"],
            "competitors": ["acme cloud", "globex"],
            "self_harm": ["lethal dose*", "kill myself", "suicide method*"],
        },
    },
    "json_schema": {
        "type": "json_schema",
        "schema": {
            "type": "object",
            "required": ["label", "confidence"],
            "properties": {
                "label": {"enum": ["positive", "negative", "neutral"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "additionalProperties": False,
        },
    },
    "groundedness": {"type": "groundedness", "threshold": 0.6},
}


def load_labelled() -> list[dict[str, Any]]:
    """The examples of the packaged labelled set, validated."""
    text = (
        resources.files("nanoforge.evaluation").joinpath("data/guardrails_labelled.jsonl").read_text("utf-8")
    )
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if (
            row.get("rail") not in EVAL_RAILS
            or row.get("label") not in (0, 1)
            or not isinstance(row.get("text"), str)
        ):
            raise ValueError(f"guardrails_labelled.jsonl line {lineno}: bad example {row!r}")
        rows.append(row)
    return rows


def _stats(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | int]:
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return {
        "n": tp + fp + fn + tn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
    }


def evaluate(
    examples: Sequence[Mapping[str, Any]], rails: Mapping[str, Rail] | None = None, repeats: int = 1
) -> dict[str, Any]:
    """Score each example with its rail (``rails`` default: built from ``EVAL_RAILS``).

    Returns ``{"rails": {name: stats}, "pii_kinds": {kind: stats}, "errors": {name: [ids]}}`` where stats
    hold tp / fp / fn / tn, precision, recall and latency (mean and max ms over ``repeats`` runs each).
    """
    rails = dict(rails) if rails is not None else {k: build_rail(v) for k, v in EVAL_RAILS.items()}
    counts: dict[str, list[int]] = {}
    latencies: dict[str, list[float]] = {}
    errors: dict[str, list[str]] = {}
    kind_counts = {k: [0, 0, 0, 0] for k in DETECTORS}
    for ex in examples:
        rail = rails[ex["rail"]]
        for _ in range(repeats):
            result = rail.apply(ex["text"], ex.get("chunks", ()))
            latencies.setdefault(ex["rail"], []).append(result.latency_ms)
        fired = result.action != "allow" or (ex["rail"] == "pii" and bool(result.findings))
        c = counts.setdefault(ex["rail"], [0, 0, 0, 0])
        c[[[3, 1], [2, 0]][ex["label"]][int(fired)]] += 1  # tn, fp / fn, tp
        if fired != bool(ex["label"]):
            errors.setdefault(ex["rail"], []).append(ex["id"])
        if ex["rail"] == "pii":
            found = {f.kind for f in result.findings}
            for kind, kc in kind_counts.items():
                expected = kind in ex.get("kinds", [])
                kc[[[3, 1], [2, 0]][expected][kind in found]] += 1
    out: dict[str, Any] = {"rails": {}, "pii_kinds": {}, "errors": errors}
    for name, (tp, fp, fn, tn) in counts.items():
        lat = latencies[name]
        out["rails"][name] = _stats(tp, fp, fn, tn) | {
            "latency_ms_mean": sum(lat) / len(lat),
            "latency_ms_max": max(lat),
        }
    for kind, (tp, fp, fn, tn) in kind_counts.items():
        out["pii_kinds"][kind] = _stats(tp, fp, fn, tn)
    return out
