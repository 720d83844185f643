"""Chat rendering: messages -> token ids plus a loss mask, shared by SFT training and serving.

One renderer turns a list of chat messages into ``RenderedChat(ids, loss_mask)`` where ``loss_mask[i]``
is 1 exactly on the tokens the assistant produced (its text, its tool calls and its end-of-turn token)
and 0 on system/user/tool text and on role headers. Training packs these ids and masks; serving renders
the same prompt with ``add_generation_prompt=True`` and parses the reply with ``parse_tool_calls``.

The chat template is *data* stored with the tokenizer (``tok.chat_template``, a JSON-able dict), built
by one of the functions in ``TEMPLATES`` (ChatML, Llama-3-style). Role headers and other template
tokens are inserted as special-token ids directly; message content is always encoded with
``allowed_special="none"``, so text typed by a user can never become ``<|im_end|>`` or any other control
token. Tokenizers imported from Hugging Face carry a Jinja template string instead; those are rendered
by :mod:`nanoforge.tokenizer.chat_jinja` and return the same ``RenderedChat``.

Deliberately not here: sampling, stop-sequence handling during generation, sequence packing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nanoforge.tokenizer.protocol import TokenizerLike

#: Roles a message may have.
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

#: Format tag stored inside every native template dict.
TEMPLATE_FORMAT = "nanoforge-chat-template"

Message = Mapping[str, Any]


@dataclass(frozen=True)
class RenderedChat:
    """Token ids of a rendered conversation and the per-token loss mask (same length)."""

    ids: list[int]
    loss_mask: list[int]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.loss_mask):
            raise ValueError(f"ids ({len(self.ids)}) and loss_mask ({len(self.loss_mask)}) differ in length")


# ---------------------------------------------------------------------------------------------------
# Templates: plain dicts, so they can be saved inside tokenizer.json and exported as Jinja.
# A header is a list of segments, each {"special": "<tok>"} or {"text": "... {role} ..."}.
# ---------------------------------------------------------------------------------------------------

_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to help with the user's request. "
    "Their signatures, one JSON object per line:\n<tools>"
)
_TOOLS_OUTRO = (
    "\n</tools>\n\nTo call a function, reply with a JSON object "
    '{"name": <function-name>, "arguments": <args-object>} inside the tool-call markers.'
)


def chatml_template() -> dict[str, Any]:
    """ChatML (Qwen / Hermes style): ``<|im_start|>role\\ncontent<|im_end|>\\n``."""
    return {
        "format": TEMPLATE_FORMAT,
        "version": 1,
        "name": "chatml",
        "bos": None,
        "header": [{"special": "<|im_start|>"}, {"text": "{role}\n"}],
        "turn_end": "<|im_end|>",
        "turn_sep": "\n",
        "role_names": {r: r for r in ROLES},
        "tool_call_start": "<tool_call>",
        "tool_call_end": "</tool_call>",
        "tools_intro": _TOOLS_INTRO,
        "tools_outro": _TOOLS_OUTRO,
    }


def llama3_template() -> dict[str, Any]:
    """Llama-3-style headers: ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``.

    Tool results use the role name ``ipython`` and tool calls sit between ``<|python_tag|>`` and
    ``<|eom_id|>`` (a simplification of Meta's format: the turn still ends with ``<|eot_id|>``).
    """
    return {
        "format": TEMPLATE_FORMAT,
        "version": 1,
        "name": "llama3",
        "bos": "<|begin_of_text|>",
        "header": [
            {"special": "<|start_header_id|>"},
            {"text": "{role}"},
            {"special": "<|end_header_id|>"},
            {"text": "\n\n"},
        ],
        "turn_end": "<|eot_id|>",
        "turn_sep": "",
        "role_names": {"system": "system", "user": "user", "assistant": "assistant", "tool": "ipython"},
        "tool_call_start": "<|python_tag|>",
        "tool_call_end": "<|eom_id|>",
        "tools_intro": _TOOLS_INTRO,
        "tools_outro": _TOOLS_OUTRO,
    }


#: Registry of template builders; the key is what ``--chat-template`` and ``add_chat_template`` accept.
TEMPLATES: dict[str, Callable[[], dict[str, Any]]] = {
    "chatml": chatml_template,
    "llama3": llama3_template,
}

_REQUIRED_KEYS = ("header", "turn_end", "turn_sep", "role_names", "tool_call_start", "tool_call_end")


def get_template(template: str | Mapping[str, Any]) -> dict[str, Any]:
    """Return a validated template dict from a registry name or a dict.

    Raises:
        ValueError: unknown name, or a dict missing keys / with malformed segments.
    """
    if isinstance(template, str):
        builder = TEMPLATES.get(template)
        if builder is None:
            raise ValueError(f"unknown chat template {template!r}; accepted: {', '.join(sorted(TEMPLATES))}")
        return builder()
    if not isinstance(template, Mapping):
        raise ValueError(f"chat template must be a name or a dict, got {type(template).__name__}")
    tpl = dict(template)
    missing = [k for k in _REQUIRED_KEYS if k not in tpl]
    if missing:
        raise ValueError(f"chat template is missing keys {missing}; required: {list(_REQUIRED_KEYS)}")
    for seg in tpl["header"]:
        if not (isinstance(seg, Mapping) and len(seg) == 1 and ("special" in seg or "text" in seg)):
            raise ValueError(f"bad header segment {seg!r}; accepted: {{'special': str}} or {{'text': str}}")
    absent = [r for r in ROLES if r not in tpl["role_names"]]
    if absent:
        raise ValueError(f"chat template role_names lacks roles {absent}")
    return tpl


def template_specials(template: str | Mapping[str, Any]) -> list[str]:
    """The special-token strings a template needs, in a stable order (e.g. ``CHATML_SPECIALS``)."""
    tpl = get_template(template)
    out: list[str] = []
    candidates = [tpl.get("bos")] + [s.get("special") for s in tpl["header"]]
    candidates += [tpl["turn_end"], tpl["tool_call_start"], tpl["tool_call_end"]]
    for s in candidates:
        if s and s not in out:
            out.append(s)
    return out


#: The special tokens ChatML needs; pass them to ``train_bpe(special_tokens=...)``.
CHATML_SPECIALS: tuple[str, ...] = tuple(template_specials("chatml"))
#: The special tokens the Llama-3-style template needs.
LLAMA3_SPECIALS: tuple[str, ...] = tuple(template_specials("llama3"))


# ---------------------------------------------------------------------------------------------------
# Message validation
# ---------------------------------------------------------------------------------------------------


def _normalize_tool_call(call: Any, where: str) -> dict[str, Any]:
    """Accept ``{"name", "arguments": dict}`` or OpenAI's ``{"function": {"name", "arguments": str}}``."""
    if not isinstance(call, Mapping):
        raise ValueError(f"{where}: a tool call must be a dict, got {type(call).__name__}")
    fn = call.get("function", call)
    if not isinstance(fn, Mapping):
        raise ValueError(f"{where}: 'function' must be a dict, got {type(fn).__name__}")
    name, args = fn.get("name"), fn.get("arguments", {})
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: tool call needs a non-empty string 'name', got {name!r}")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: tool call arguments are not valid JSON: {exc.msg}") from None
    if not isinstance(args, Mapping):
        raise ValueError(f"{where}: tool call 'arguments' must be a JSON object, got {type(args).__name__}")
    return {"name": name, "arguments": dict(args)}


def validate_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Check messages and return normalized copies (``content`` str, ``tool_calls`` normalized).

    Raises:
        ValueError: naming the message index and what is accepted.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"message {i}"
        if not isinstance(msg, Mapping):
            raise ValueError(f"{where}: must be a dict with 'role' and 'content', got {type(msg).__name__}")
        role = msg.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r}; accepted: {', '.join(ROLES)}")
        calls = msg.get("tool_calls") or []
        if calls and role != "assistant":
            raise ValueError(f"{where}: only assistant messages may have tool_calls (role is {role!r})")
        if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
            raise ValueError(f"{where}: tool_calls must be a list, got {type(calls).__name__}")
        content = msg.get("content")
        if content is None and calls:
            content = ""
        if content is None:
            raise ValueError(f"{where} ({role}): missing 'content'; accepted: a string")
        if not isinstance(content, str):
            raise ValueError(f"{where} ({role}): content must be a string, got {type(content).__name__}")
        norm: dict[str, Any] = {"role": role, "content": content}
        if calls:
            norm["tool_calls"] = [
                _normalize_tool_call(c, f"{where} tool_calls[{j}]") for j, c in enumerate(calls)
            ]
        for key in ("name", "tool_call_id"):
            if key in msg and msg[key] is not None:
                if not isinstance(msg[key], str):
                    raise ValueError(f"{where}: {key!r} must be a string, got {type(msg[key]).__name__}")
                norm[key] = msg[key]
        out.append(norm)
    return out


def validate_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Check tool definitions (JSON-schema function specs) and return them as plain dicts."""
    if not tools:
        return []
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ValueError(f"tools must be a list of dicts, got {type(tools).__name__}")
    out = []
    for j, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ValueError(f"tools[{j}] must be a dict, got {type(tool).__name__}")
        fn = tool.get("function", tool)
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ValueError(f"tools[{j}] needs a string 'name' (or 'function': {{'name': ...}})")
        try:
            json.dumps(tool)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tools[{j}] is not JSON-serializable: {exc}") from None
        out.append(dict(tool))
    return out


# ---------------------------------------------------------------------------------------------------
# Rendering: a list of pieces (kind, text, mask) -> ids, or -> display text.
# ---------------------------------------------------------------------------------------------------

_Piece = tuple[str, str, int]  # ("special" | "text", string, mask)


def tool_call_json(call: Mapping[str, Any]) -> str:
    """The JSON text of one tool call as the assistant writes it."""
    return json.dumps({"name": call["name"], "arguments": call["arguments"]}, ensure_ascii=False)


def tools_block(tpl: Mapping[str, Any], tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool-definition text placed in the system turn."""
    lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    return f"{tpl['tools_intro']}{lines}{tpl['tools_outro']}"


def _header(tpl: Mapping[str, Any], role: str) -> list[_Piece]:
    name = tpl["role_names"][role]
    out: list[_Piece] = []
    for seg in tpl["header"]:
        if "special" in seg:
            out.append(("special", seg["special"], 0))
        else:
            out.append(("text", seg["text"].replace("{role}", name), 0))
    return out


def _pieces(
    tpl: Mapping[str, Any],
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    add_generation_prompt: bool,
) -> list[_Piece]:
    pieces: list[_Piece] = []
    if tpl.get("bos"):
        pieces.append(("special", tpl["bos"], 0))
    if tools:
        messages = _with_tools_system(messages, tools_block(tpl, tools))
    for msg in messages:
        role = msg["role"]
        m = 1 if role == "assistant" else 0
        pieces += _header(tpl, role)
        if msg["content"]:
            pieces.append(("text", msg["content"], m))
        for j, call in enumerate(msg.get("tool_calls", [])):
            if msg["content"] or j > 0:
                pieces.append(("text", "\n", m))
            pieces.append(("special", tpl["tool_call_start"], m))
            pieces.append(("text", "\n" + tool_call_json(call) + "\n", m))
            pieces.append(("special", tpl["tool_call_end"], m))
        pieces.append(("special", tpl["turn_end"], m))
        if tpl["turn_sep"]:
            pieces.append(("text", tpl["turn_sep"], 0))
    if add_generation_prompt:
        pieces += _header(tpl, "assistant")
    return pieces


def _with_tools_system(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    """Put the tools block into the first system turn, creating one if there is none."""
    if messages and messages[0]["role"] == "system":
        sys_text = messages[0]["content"]
        first = {"role": "system", "content": f"{sys_text}\n\n{block}" if sys_text else block}
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def _native_template(tok: TokenizerLike) -> dict[str, Any]:
    tpl = getattr(tok, "chat_template", None)
    if tpl is None:
        raise ValueError("tokenizer has no chat template; attach one with add_chat_template(tok, 'chatml')")
    tpl = get_template(tpl)
    missing = [s for s in template_specials(tpl) if s not in tok.special_tokens]
    if missing:
        raise ValueError(
            f"chat template {tpl.get('name')!r} needs special tokens {missing} the tokenizer lacks"
        )
    return tpl


def render_chat(
    tok: TokenizerLike,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> RenderedChat:
    """Render messages to ids and an assistant-only loss mask.

    Args:
        tok: a tokenizer whose ``chat_template`` is a native template dict or (HF) a Jinja string.
        messages: ``[{"role": ..., "content": ..., "tool_calls"?: [...]}, ...]``.
        add_generation_prompt: append the assistant header so a model continues as the assistant.
        tools: JSON-schema tool definitions, rendered into the system turn.

    Returns:
        ``RenderedChat`` with ``ids`` and ``loss_mask`` aligned 1:1.
    """
    if isinstance(getattr(tok, "chat_template", None), str):
        from nanoforge.tokenizer.chat_jinja import render_chat_jinja

        return render_chat_jinja(tok, messages, add_generation_prompt=add_generation_prompt, tools=tools)
    tpl = _native_template(tok)
    pieces = _pieces(tpl, validate_messages(messages), validate_tools(tools), add_generation_prompt)
    specials = tok.special_tokens
    ids: list[int] = []
    mask: list[int] = []
    for kind, text, m in pieces:
        new = [specials[text]] if kind == "special" else tok.encode(text, allowed_special="none")
        ids += new
        mask += [m] * len(new)
    return RenderedChat(ids, mask)


def render_chat_text(
    tok: TokenizerLike,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render messages to the display text (special tokens written as their strings)."""
    if isinstance(getattr(tok, "chat_template", None), str):
        from nanoforge.tokenizer.chat_jinja import render_jinja_text

        return render_jinja_text(tok, messages, add_generation_prompt=add_generation_prompt, tools=tools)
    tpl = _native_template(tok)
    pieces = _pieces(tpl, validate_messages(messages), validate_tools(tools), add_generation_prompt)
    return "".join(text for _, text, _ in pieces)


def parse_tool_calls(text: str, template: str | Mapping[str, Any] = "chatml") -> list[dict[str, Any]]:
    """Extract tool calls from an assistant reply: ``[{"name": ..., "arguments": {...}}, ...]``.

    Args:
        text: decoded assistant output (special tokens decoded as their strings).
        template: the template (name or dict) whose tool-call markers to look for.

    Raises:
        ValueError: a tool-call block that is not valid JSON or has no ``name``.
    """
    tpl = get_template(template)
    start, end = re.escape(tpl["tool_call_start"]), re.escape(tpl["tool_call_end"])
    calls = []
    for k, match in enumerate(re.finditer(f"{start}(.*?)(?:{end}|$)", text, flags=re.S)):
        body = match.group(1).strip()
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tool call {k} is not valid JSON ({exc.msg}): {body[:80]!r}") from None
        calls.append(_normalize_tool_call(obj, f"tool call {k}"))
    return calls


def strip_tool_calls(text: str, template: str | Mapping[str, Any] = "chatml") -> str:
    """The reply text without its tool-call blocks (what a client shows as ``content``)."""
    tpl = get_template(template)
    start, end = re.escape(tpl["tool_call_start"]), re.escape(tpl["tool_call_end"])
    return re.sub(f"{start}.*?(?:{end}|$)", "", text, flags=re.S).strip()


def add_chat_template(tok: Any, template: str | Mapping[str, Any] = "chatml") -> Any:
    """Return a copy of a native ``Tokenizer`` with ``template`` attached and its special tokens added.

    Special tokens the tokenizer already has keep their ids; missing ones get the next free ids. Train
    with ``train_bpe(..., special_tokens=CHATML_SPECIALS)`` to have them from the start.

    Raises:
        ValueError: unknown template name, or ``tok`` is not a native nanoforge ``Tokenizer``.
    """
    from nanoforge.tokenizer.core import Tokenizer

    if not isinstance(tok, Tokenizer):
        raise ValueError(f"add_chat_template needs a native nanoforge Tokenizer, got {type(tok).__name__}")
    tpl = get_template(template)
    specials = list(tok.special_tokens) + [s for s in template_specials(tpl) if s not in tok.special_tokens]
    return Tokenizer(
        tok.merges,
        pattern=tok.pattern,
        special_tokens=specials,
        chat_template=tpl,
        metadata=dict(tok.metadata),
        use_fast=tok.backend == "tiktoken",
    )
