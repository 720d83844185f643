"""The registry of rail builders: a rail is configured as ``{"type": NAME, **kwargs}``.

``RAIL_BUILDERS`` maps each type name to its builder (the rail class); ``build_rail`` validates the
type and the keyword arguments against the builder's signature, so a typo in a YAML config is a one-line
error naming the bad key and the accepted ones. Register a new rail by adding one entry.

What it deliberately does not do: order or combine rails (``pipeline.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from nanoforge.evaluation.guardrails.base import Rail
from nanoforge.evaluation.guardrails.grounding import GroundednessRail
from nanoforge.evaluation.guardrails.injection import InjectionRail
from nanoforge.evaluation.guardrails.pii import PiiRail
from nanoforge.evaluation.guardrails.schema import JsonSchemaRail
from nanoforge.evaluation.guardrails.topics import DenyListRail

RAIL_BUILDERS: dict[str, Callable[..., Rail]] = {
    "pii": PiiRail,
    "injection": InjectionRail,
    "deny_topics": DenyListRail,
    "json_schema": JsonSchemaRail,
    "groundedness": GroundednessRail,
}


def build_rail(spec: Mapping[str, Any]) -> Rail:
    """Build one rail from ``{"type": ..., **kwargs}``.

    >>> build_rail({"type": "injection", "threshold": 0.7}).threshold
    0.7
    >>> build_rail({"type": "injection", "treshold": 0.7})
    Traceback (most recent call last):
    ...
    ValueError: unknown option(s) ['treshold'] for rail 'injection'; accepted: threshold, action, name
    """
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError(f"a rail spec is a mapping with a 'type' key, got {spec!r}")
    kind = spec["type"]
    if kind not in RAIL_BUILDERS:
        raise ValueError(f"unknown rail type {kind!r}; accepted: {', '.join(RAIL_BUILDERS)}")
    builder = RAIL_BUILDERS[kind]
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    accepted = [p for p in inspect.signature(builder).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for rail {kind!r}; accepted: {', '.join(accepted)}")
    try:
        return builder(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad options for rail {kind!r}: {exc}") from None
