"""Structured output: JSON-schema / regex / choice constraints and forced tool calls as token masks.

``Structurer`` (one per served tokenizer) turns a request's ``response_format`` / ``tool_choice`` into a
``Guide`` (a byte DFA + token masks cached per state); ``GuideProcessor`` is the engine's logits processor
and ``GuideState`` lets the text layer end the request when the structure is complete.
"""

from nanoforge.inference_server.structured.build import Structurer, check_tool_choice
from nanoforge.inference_server.structured.guide import Guide, GuideProcessor, GuideState, TokenIndex
from nanoforge.inference_server.structured.json_schema import schema_to_node
from nanoforge.inference_server.structured.regex_dfa import DFA, build_dfa, compile_regex, parse_regex

__all__ = [
    "DFA",
    "Guide",
    "GuideProcessor",
    "GuideState",
    "Structurer",
    "TokenIndex",
    "build_dfa",
    "check_tool_choice",
    "compile_regex",
    "parse_regex",
    "schema_to_node",
]
