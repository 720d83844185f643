"""JSON Schema (a practical subset) -> regex AST of compact JSON text that validates against it.

What it does: ``schema_to_node(schema)`` checks the schema and builds the AST (``regex_dfa`` nodes) of
every compact JSON text (no whitespace) it produces. Supported: ``type`` (string, integer, number,
boolean, null, object, array, or a list of them), ``enum``, ``const``, ``anyOf``; objects: ``properties``
(written in their declared order, ALL of them, required or not: always valid, simpler automaton),
``required`` (must name declared properties), ``additionalProperties`` (never generated); an object
without ``properties`` (``{"type": "object"}``, json_object mode) gets string keys and JSON values nested
at most ``GENERIC_DEPTH`` deep; arrays: ``items``, ``minItems``, ``maxItems``; strings: ``minLength``,
``maxLength`` (characters are printable ASCII or the escapes ``\\" \\\\ \\n \\t``); integers: ``minimum``,
``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum`` (an exact digit-range automaton); numbers
without bounds are ``-?int(.frac)?(e exp)?``; a number with bounds is written as an integer in range.
Annotations (title, description, default, examples, format, $schema, $id) are ignored, as the JSON
Schema spec allows for ``format``.
What it does not do: ``$ref`` / recursion, ``pattern``, ``oneOf`` / ``allOf`` / ``not``, ``multipleOf``,
``uniqueItems``, ``patternProperties``, ``minProperties`` ... -> InvalidRequest naming the keyword.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nanoforge.inference_server.errors import InvalidRequest
from nanoforge.inference_server.structured.regex_dfa import Node, literal

#: Nesting depth of values inside a property-less object / item-less array.
GENERIC_DEPTH = 2
#: Most digits of an unbounded integer, of a fraction and of an exponent.
INT_DIGITS, FRAC_DIGITS, EXP_DIGITS = 15, 6, 2

_ANNOTATIONS = {"title", "description", "default", "examples", "format", "$schema", "$id", "$comment"}
_KEYWORDS = {
    "type", "enum", "const", "anyOf", "properties", "required", "additionalProperties", "items",
    "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum",
}  # fmt: skip


def _set(chars: str) -> Node:
    m = 0
    for c in chars:
        m |= 1 << ord(c)
    return ("set", m)


_DIGIT = _set("0123456789")
_NONZERO = _set("123456789")
_STR_CHAR: Node = ("alt", [("set", sum(1 << b for b in range(0x20, 0x7F) if b not in (0x22, 0x5C))),
                           ("cat", [_set("\\"), _set('"\\nt')])])  # fmt: skip
_INT = (
    "cat",
    [("rep", _set("-"), 0, 1), ("alt", [_set("0"), ("cat", [_NONZERO, ("rep", _DIGIT, 0, INT_DIGITS - 1)])])],
)
_NUMBER = (
    "cat",
    [
        _INT,
        ("rep", ("cat", [_set("."), ("rep", _DIGIT, 1, FRAC_DIGITS)]), 0, 1),
        ("rep", ("cat", [_set("eE"), ("rep", _set("+-"), 0, 1), ("rep", _DIGIT, 1, EXP_DIGITS)]), 0, 1),
    ],
)


def _bad(path: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"invalid JSON schema at {path or '#'}: {what}")


def _nonneg_int(schema: dict[str, Any], key: str, path: str) -> int | None:
    v = schema.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _bad(f"{path}/{key}", f"{v!r} is not an integer >= 0")
    return v


def _seq(items: list[Node], sep: str) -> Node:
    out: list[Node] = []
    for i, it in enumerate(items):
        if i:
            out.append(literal(sep))
        out.append(it)
    return ("cat", out)


def _digits_range(lo: str, hi: str) -> Node:
    """Strings of len(lo) == len(hi) digits between lo and hi (inclusive, leading zeros allowed)."""
    if not lo:
        return ("cat", [])
    if lo[0] == hi[0]:
        return ("cat", [literal(lo[0]), _digits_range(lo[1:], hi[1:])])
    n = len(lo) - 1
    # Split [lo, hi] into: lo's first digit (rest >= lo[1:]), full middle digits, hi's first digit (rest <=
    # hi[1:]); an end whose rest spans all of 0..9 joins the middle (keeps the automaton O(width^2)).
    first = int(lo[0]) if lo[1:] == "0" * n else int(lo[0]) + 1
    last = int(hi[0]) if hi[1:] == "9" * n else int(hi[0]) - 1
    parts: list[Node] = []
    if first > int(lo[0]):
        parts.append(("cat", [literal(lo[0]), _digits_range(lo[1:], "9" * n)]))
    if first <= last:
        parts.append(("cat", [_set("".join(str(d) for d in range(first, last + 1))), ("rep", _DIGIT, n, n)]))
    if last < int(hi[0]):
        parts.append(("cat", [literal(hi[0]), _digits_range("0" * n, hi[1:])]))
    return ("alt", parts)


def _nonneg_range(lo: int, hi: int) -> Node:
    """Decimal text (no leading zeros) of the integers in [lo, hi], 0 <= lo <= hi."""
    parts: list[Node] = []
    while lo <= hi:
        width = len(str(lo))
        top = min(hi, 10**width - 1)
        parts.append(_digits_range(str(lo), str(top)))
        lo = top + 1
    return ("alt", parts)


def int_range(lo: int, hi: int) -> Node:
    """Decimal text of the integers in [lo, hi] (JSON integer syntax)."""
    parts: list[Node] = []
    if lo < 0:  # negatives: "-" then |x| in [max(1, -hi), -lo]
        parts.append(("cat", [literal("-"), _nonneg_range(max(1, -hi), -lo)]))
    if hi >= 0:
        parts.append(_nonneg_range(max(0, lo), hi))
    return ("alt", parts)


def _bounds(schema: dict[str, Any], path: str, integer: bool) -> tuple[int, int] | None:
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    vals = {k: schema[k] for k in keys if k in schema}
    if not vals:
        return None
    for k, v in vals.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or abs(v) >= 10**INT_DIGITS:
            raise _bad(f"{path}/{k}", f"{v!r} is not a number of magnitude < 1e{INT_DIGITS}")
    big = 10**INT_DIGITS - 1
    lo, hi = -big, big
    if "minimum" in vals:
        lo = max(lo, -int(-vals["minimum"] // 1))  # ceil
    if "exclusiveMinimum" in vals:
        lo = max(lo, int(vals["exclusiveMinimum"] // 1) + 1)
    if "maximum" in vals:
        hi = min(hi, int(vals["maximum"] // 1))  # floor
    if "exclusiveMaximum" in vals:
        hi = min(hi, -int(-vals["exclusiveMaximum"] // 1) - 1)
    if lo > hi:
        kind = "integer" if integer else "integer-valued number"
        raise _bad(path, f"no {kind} satisfies the bounds {vals}")
    return lo, hi


def _string(schema: dict[str, Any], path: str) -> Node:
    lo = _nonneg_int(schema, "minLength", path) or 0
    hi = _nonneg_int(schema, "maxLength", path)
    if hi is not None and hi < lo:
        raise _bad(path, f"maxLength {hi} < minLength {lo}")
    return ("cat", [literal('"'), ("rep", _STR_CHAR, lo, hi), literal('"')])


def _object(schema: dict[str, Any], path: str, depth: int) -> Node:
    props = schema.get("properties")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _bad(f"{path}/required", f"{required!r} is not a list of property names")
    if props is None:
        if required:
            raise _bad(f"{path}/required", "names properties but the schema declares no properties")
        if depth >= GENERIC_DEPTH:
            return literal("{}")
        member = ("cat", [_string({"maxLength": 32}, path), literal(":"), _generic(depth + 1)])
        return (
            "cat",
            [
                literal("{"),
                ("rep", ("cat", [member, ("rep", ("cat", [literal(","), member]), 0, None)]), 0, 1),
                literal("}"),
            ],
        )
    if not isinstance(props, dict):
        raise _bad(f"{path}/properties", f"{type(props).__name__} is not an object")
    missing = [r for r in required if r not in props]
    if missing:
        raise _bad(f"{path}/required", f"names undeclared properties {missing}")
    ap = schema.get("additionalProperties", True)
    if not isinstance(ap, (bool, dict)):
        raise _bad(f"{path}/additionalProperties", f"{ap!r} is not a boolean or a schema")
    members = [
        ("cat", [literal(json.dumps(name) + ":"), _node(sub, f"{path}/properties/{name}", depth + 1)])
        for name, sub in props.items()
    ]
    return ("cat", [literal("{"), _seq(members, ","), literal("}")])


def _array(schema: dict[str, Any], path: str, depth: int) -> Node:
    lo = _nonneg_int(schema, "minItems", path) or 0
    hi = _nonneg_int(schema, "maxItems", path)
    if hi is not None and hi < lo:
        raise _bad(path, f"maxItems {hi} < minItems {lo}")
    items = schema.get("items")
    if items is None:
        if depth >= GENERIC_DEPTH and lo == 0:
            return literal("[]")
        item = _generic(depth + 1)
    else:
        item = _node(items, f"{path}/items", depth + 1)
    tail = ("cat", [literal(","), item])
    if hi == 0:
        return literal("[]")
    first_lo = 1 if lo > 0 else 0
    rest = ("rep", tail, max(lo - 1, 0), None if hi is None else hi - 1)
    body = ("cat", [item, rest])
    return ("cat", [literal("["), body if first_lo else ("rep", body, 0, 1), literal("]")])


def _generic(depth: int) -> Node:
    """Any JSON value, objects / arrays nested at most ``GENERIC_DEPTH`` deep."""
    scalars: list[Node] = [_string({}, ""), _NUMBER, literal("true"), literal("false"), literal("null")]
    if depth >= GENERIC_DEPTH:
        return ("alt", scalars)
    return ("alt", [*scalars, _object({"type": "object"}, "", depth), _array({"type": "array"}, "", depth)])


def _typed(kind: str, schema: dict[str, Any], path: str, depth: int) -> Node:
    builders: dict[str, Callable[[], Node]] = {
        "string": lambda: _string(schema, path),
        "integer": lambda: _INT if (b := _bounds(schema, path, True)) is None else int_range(*b),
        "number": lambda: _NUMBER if (b := _bounds(schema, path, False)) is None else int_range(*b),
        "boolean": lambda: ("alt", [literal("true"), literal("false")]),
        "null": lambda: literal("null"),
        "object": lambda: _object(schema, path, depth),
        "array": lambda: _array(schema, path, depth),
    }
    if kind not in builders:
        raise _bad(f"{path}/type", f"unknown type {kind!r}; accepted: {', '.join(builders)}")
    return builders[kind]()


def _node(schema: Any, path: str, depth: int) -> Node:
    if depth > 32:
        raise _bad(path, "nested more than 32 levels")
    if schema is True or schema == {}:
        return _generic(depth)
    if not isinstance(schema, dict):
        raise _bad(path, f"{schema!r} is not a schema object")
    unknown = sorted(set(schema) - _KEYWORDS - _ANNOTATIONS)
    if unknown:
        raise _bad(path, f"unsupported keyword(s) {unknown}; supported: {sorted(_KEYWORDS)}")
    if "const" in schema:
        return literal(json.dumps(schema["const"], separators=(",", ":")))
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            raise _bad(f"{path}/enum", f"{values!r} is not a non-empty list")
        return ("alt", [literal(json.dumps(v, separators=(",", ":"))) for v in values])
    if "anyOf" in schema:
        subs = schema["anyOf"]
        if not isinstance(subs, list) or not subs:
            raise _bad(f"{path}/anyOf", f"{subs!r} is not a non-empty list of schemas")
        return ("alt", [_node(s, f"{path}/anyOf/{i}", depth) for i, s in enumerate(subs)])
    kind = schema.get("type")
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema:
            kind = "array"
        else:
            return _generic(depth)
    if isinstance(kind, list):
        if not kind or not all(isinstance(k, str) for k in kind):
            raise _bad(f"{path}/type", f"{kind!r} is not a non-empty list of type names")
        return ("alt", [_typed(k, schema, path, depth) for k in kind])
    if not isinstance(kind, str):
        raise _bad(f"{path}/type", f"{kind!r} is not a type name")
    return _typed(kind, schema, path, depth)


def schema_to_node(schema: Any) -> Node:
    """The AST of compact JSON texts valid under ``schema``.

    Raises:
        InvalidRequest: a malformed or unsupported schema, naming the JSON pointer and the problem.
    """
    return _node(schema, "", 0)
