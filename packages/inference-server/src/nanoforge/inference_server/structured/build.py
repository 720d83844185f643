"""Requests -> guides: ``response_format`` and ``tool_choice`` turned into compiled, cached ``Guide`` objects.

What it does: ``Structurer`` belongs to one ``ServingModel`` (one tokenizer). ``for_request`` reads a
request's ``response_format`` (``{"type": "json_schema", "schema": {...}}`` | ``{"type": "regex",
"pattern": "..."}`` | ``{"type": "choice", "choices": [...]}``) and ``tool_choice`` ("none" | "auto" |
"required" | ``{"type": "function", "function": {"name": ...}}``) and returns the ``Guide`` to apply (or
None). A forced tool call is the chat template's wrapping: the ``tool_call_start`` marker (forced token
ids), then ``\\n{"name":"<tool>","arguments":<JSON valid for its parameters schema>}\\n`` (the DFA), then
``tool_call_end`` (forced ids), then a stop token. Compiled guides are kept in a small LRU keyed by the
canonical JSON of the spec; concurrent requests for one spec compile it once. Compiling a big schema
takes seconds of pure CPU, so servers call ``for_request`` from a worker thread (``ServingModel`` does),
never on their event loop.
What it does not do: mask logits itself (``guide``), parse tool calls (``tokenizer.chat.parse_tool_calls``).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from nanoforge.inference_server.errors import InvalidRequest
from nanoforge.inference_server.structured.guide import Guide, TokenIndex
from nanoforge.inference_server.structured.json_schema import schema_to_node
from nanoforge.inference_server.structured.regex_dfa import Node, build_dfa, literal, parse_regex

#: Accepted ``tool_choice`` strings.
TOOL_CHOICES = ("none", "auto", "required")


def _choice_node(rf: dict[str, Any]) -> Node:
    values = rf.get("choices")
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise InvalidRequest(
            f"response_format.choices={values!r} is invalid; accepted: a non-empty list of non-empty strings"
        )
    return ("alt", [literal(v) for v in values])


def _regex_node(rf: dict[str, Any]) -> Node:
    pattern = rf.get("pattern", rf.get("regex"))
    if not isinstance(pattern, str) or not pattern:
        raise InvalidRequest(
            f"response_format.pattern={pattern!r} is invalid; accepted: a non-empty regex string"
        )
    return parse_regex(pattern)


def _schema_node(rf: dict[str, Any]) -> Node:
    if "schema" not in rf:
        raise InvalidRequest("response_format json_schema has no 'schema'; accepted: a JSON Schema object")
    return schema_to_node(rf["schema"])


#: response_format "type" -> builder of its AST.
FORMAT_BUILDERS: dict[str, Callable[[dict[str, Any]], Node]] = {
    "json_schema": _schema_node,
    "json_object": lambda rf: schema_to_node({"type": "object"}),
    "regex": _regex_node,
    "choice": _choice_node,
}


def tool_names(tools: Sequence[dict[str, Any]]) -> list[str]:
    """The function names of OpenAI-shaped tool definitions."""
    return [str((t.get("function") or {}).get("name", "")) for t in tools if isinstance(t, dict)]


def check_tool_choice(tool_choice: Any, tools: Sequence[dict[str, Any]] | None) -> str | None:
    """Validate ``tool_choice``; returns "none" | "auto" | "required" | "named:<name>" (None if unset).

    Raises:
        InvalidRequest: an unknown value, a named tool that is not defined, or required without tools.
    """
    if tool_choice is None:
        return None
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICES:
            raise InvalidRequest(
                f"tool_choice={tool_choice!r} is invalid; accepted: none, auto, required or "
                '{"type": "function", "function": {"name": ...}}'
            )
        if tool_choice == "required" and not tools:
            raise InvalidRequest("tool_choice='required' needs tools; none were given")
        return tool_choice
    name = (tool_choice.get("function") or {}).get("name") if isinstance(tool_choice, dict) else None
    if not isinstance(name, str) or tool_choice.get("type", "function") != "function":
        raise InvalidRequest(
            f"tool_choice={tool_choice!r} is invalid; accepted: none, auto, required or "
            '{"type": "function", "function": {"name": ...}}'
        )
    names = tool_names(tools or [])
    if name not in names:
        raise InvalidRequest(f"tool_choice names unknown tool {name!r}; defined tools: {names}")
    return f"named:{name}"


def _tool_call_node(tools: Sequence[dict[str, Any]], only: str | None) -> Node:
    calls: list[Node] = []
    for i, t in enumerate(tools):
        fn = t.get("function") or {}
        name = fn.get("name")
        if only is not None and name != only:
            continue
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        try:
            args = schema_to_node(params)
        except InvalidRequest as e:
            raise InvalidRequest(f"tools[{i}] ({name}) parameters: {e}") from None
        head = literal("\n" + json.dumps({"name": name}, separators=(",", ":"))[:-1] + ',"arguments":')
        calls.append(("cat", [head, args, literal("}\n")]))
    return ("alt", calls)


class Structurer:
    """Builds and caches the guides of one tokenizer.

    Args:
        tokenizer: a ``TokenizerLike`` (``token_bytes``, ``encode``, ``special_tokens``).
        vocab_size: the model's vocabulary (logits width; may exceed the tokenizer's).
        stop_ids: tokens that end generation (allowed once the structure is complete).
        tool_markers: the chat template's (tool_call_start, tool_call_end).
        cache_size: compiled guides kept.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_ids: Sequence[int],
        tool_markers: tuple[str, str] = ("<tool_call>", "</tool_call>"),
        cache_size: int = 64,
    ):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = list(stop_ids)
        self.tool_markers = tool_markers
        self.cache_size = cache_size
        self._index: TokenIndex | None = None
        self._cache: OrderedDict[str, Guide] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}  # key -> held while one thread compiles it
        self._index_lock = threading.Lock()

    @property
    def index(self) -> TokenIndex:
        """The tokenizer's token-bytes index (built on first use, once even when threads race)."""
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    self._index = TokenIndex(self.tokenizer, self.vocab_size)
        return self._index

    def _marker_ids(self, text: str) -> list[int]:
        specials = dict(getattr(self.tokenizer, "special_tokens", {}) or {})
        if text in specials:
            return [specials[text]]
        return list(self.tokenizer.encode(text, allowed_special="none"))

    def _cached(self, key: str) -> Guide | None:
        with self._lock:
            g = self._cache.get(key)
            if g is not None:
                self._cache.move_to_end(key)
            return g

    def _get(self, key: str, make: Callable[[], Guide]) -> Guide:
        """The cached guide of ``key``, else ``make()`` it; concurrent callers of one key compile it once."""
        g = self._cached(key)
        if g is not None:
            return g
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:  # a second request for the same key waits here for the first one's result
            g = self._cached(key)
            if g is not None:
                return g
            try:
                g = make()
                with self._lock:
                    self._cache[key] = g
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(key, None)
        return g

    def response_guide(self, response_format: dict[str, Any]) -> Guide:
        """The guide of a ``response_format`` dict. Raises InvalidRequest for a bad one."""
        if not isinstance(response_format, dict):
            raise InvalidRequest(
                f"response_format={response_format!r} is invalid; accepted: an object with a type"
            )
        kind = response_format.get("type")
        if kind not in FORMAT_BUILDERS:
            raise InvalidRequest(
                f"response_format.type={kind!r} is invalid; accepted: {', '.join(FORMAT_BUILDERS)}"
            )
        node = FORMAT_BUILDERS[kind](response_format)  # validate before the cache lookup
        key = "rf:" + json.dumps(response_format, sort_keys=True, default=str)
        return self._get(key, lambda: Guide(build_dfa(node), self.index, self.stop_ids))

    def tool_guide(self, tools: Sequence[dict[str, Any]], only: str | None) -> Guide:
        """The guide forcing one call of ``only`` (or of any tool when None)."""
        node = _tool_call_node(tools, only)
        start, end = self.tool_markers
        key = "tool:" + json.dumps([tools, only], sort_keys=True, default=str)
        return self._get(
            key,
            lambda: Guide(
                build_dfa(node), self.index, self.stop_ids, self._marker_ids(start), self._marker_ids(end)
            ),
        )

    def for_request(
        self, response_format: dict[str, Any] | None, tools: Sequence[dict[str, Any]] | None, tool_choice: Any
    ) -> Guide | None:
        """The guide a request needs, or None for free generation.

        Raises:
            InvalidRequest: bad response_format / tool_choice, or both a forced tool call and a format.
        """
        choice = check_tool_choice(tool_choice, tools)
        forced = choice == "required" or (choice or "").startswith("named:")
        if forced and response_format is not None:
            raise InvalidRequest("response_format cannot be combined with tool_choice required / named")
        if forced:
            return self.tool_guide(
                list(tools or []), choice[6:] if choice and choice.startswith("named:") else None
            )
        if response_format is not None:
            return self.response_guide(response_format)
        return None
