"""Jinja chat templates (Hugging Face ``tokenizer_config.json``) -> the same ``RenderedChat`` as chat.py.

Imported HF tokenizers carry their chat format as a Jinja string. This module renders it in a sandboxed
environment (``ImmutableSandboxedEnvironment``: templates cannot touch Python internals or mutate the
messages) with the helpers HF templates expect (``raise_exception``, a JSON ``tojson``,
``strftime_now``). It also converts a native template dict to an equivalent Jinja string for export
(``native_to_jinja``).

The assistant loss mask is found by rendering incrementally: the text added by message ``i`` is
``render(messages[:i+1])`` minus ``render(messages[:i])``; for an assistant message the part after the
generation prompt (``render(messages[:i], add_generation_prompt=True)``) is the assistant's, minus
trailing whitespace after its last special token. Special-token strings are turned into ids only where
the template put them: occurrences inside message content are encoded as plain text (no injection).

Deliberately not supported: templates that re-render earlier turns differently when later turns are
added (not prefix-stable) -> ``ValueError``; the ``{% generation %}`` tag of transformers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from itertools import pairwise
from typing import Any

from nanoforge.tokenizer.chat import (
    ROLES,
    Message,
    RenderedChat,
    get_template,
    tool_call_json,
    validate_messages,
    validate_tools,
)
from nanoforge.tokenizer.protocol import TokenizerLike


def _raise(message: str) -> None:
    raise ValueError(f"chat template error: {message}")


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    try:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:  # pragma: no cover - jinja2 is a declared dependency
        raise ImportError("rendering Jinja chat templates needs jinja2: pip install jinja2") from exc
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ValueError(f"chat template does not compile: {exc}") from None


def _jinja_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give tool calls both our shape and OpenAI's, since HF templates read either."""
    out = []
    for msg in messages:
        m = dict(msg)
        if "tool_calls" in m:
            m["tool_calls"] = [
                {"type": "function", "function": dict(c), "name": c["name"], "arguments": c["arguments"]}
                for c in m["tool_calls"]
            ]
        out.append(m)
    return out


def _context(tok: TokenizerLike) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        ctx[key] = getattr(tok, key, None) or ""
    return ctx


class _Renderer:
    """Renders one conversation's prefixes with a compiled template."""

    def __init__(self, tok: TokenizerLike, source: str, tools: list[dict[str, Any]]) -> None:
        self.template = _compile(source)
        self.ctx = _context(tok)
        self.tools = tools or None

    def __call__(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            return str(
                self.template.render(
                    messages=_jinja_messages(messages),
                    tools=self.tools,
                    add_generation_prompt=add_generation_prompt,
                    **self.ctx,
                )
            )
        except TemplateError as exc:
            raise ValueError(f"chat template failed to render: {exc}") from None

    def safe(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str | None:
        """Render, or None when the template rejects this prefix (e.g. no messages yet)."""
        try:
            return self(messages, add_generation_prompt)
        except (ValueError, TypeError, IndexError, KeyError):
            return None


def render_jinja_text(
    tok: TokenizerLike,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    template: str | None = None,
) -> str:
    """Render messages with the tokenizer's Jinja template (or ``template``) to display text."""
    source = template if template is not None else getattr(tok, "chat_template", None)
    if not isinstance(source, str):
        raise ValueError("tokenizer has no Jinja chat template")
    render = _Renderer(tok, source, validate_tools(tools))
    return render(validate_messages(messages), add_generation_prompt)


def _char_mask_spans(
    render: _Renderer, msgs: list[dict[str, Any]], add_generation_prompt: bool
) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """Full text, assistant character spans, and each message's character segment."""
    full = render(msgs, add_generation_prompt)
    bounds = [0]
    for i in range(1, len(msgs) + 1):
        prefix = full if i == len(msgs) and not add_generation_prompt else render.safe(msgs[:i], False)
        if prefix is None or not full.startswith(prefix) or len(prefix) < bounds[-1]:
            raise ValueError(
                f"chat template is not prefix-stable at message {i - 1}: rendering more messages changes "
                "earlier text, so the assistant mask cannot be computed"
            )
        bounds.append(len(prefix))
    segments = list(pairwise(bounds))
    spans = []
    for i, (start, end) in enumerate(segments):
        if msgs[i]["role"] != "assistant":
            continue
        gen = render.safe(msgs[:i], True)
        head = len(gen) if gen is not None and full.startswith(gen) and start <= len(gen) <= end else start
        spans.append((head, end))
    return full, spans, segments


def _special_positions(
    text: str, specials: Mapping[str, int], protected: list[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """(start, end, id) of special-token strings in ``text`` that are not inside a protected span."""
    if not specials:
        return []
    alternation = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    out = []
    for match in re.finditer(alternation, text):
        a, b = match.span()
        if any(ps <= a and b <= pe for ps, pe in protected):
            continue
        out.append((a, b, specials[match.group(0)]))
    return out


def _content_spans(
    text: str, msgs: list[dict[str, Any]], segments: list[tuple[int, int]], specials: Mapping[str, int]
) -> list[tuple[int, int]]:
    """Character spans of message content that contains special-token strings (to be kept plain)."""
    spans = []
    for i, (start, end) in enumerate(segments):
        content = msgs[i]["content"]
        if not content or not any(s in content for s in specials):
            continue
        for candidate in (content, content.strip()):
            pos = text.find(candidate, start, end)
            if pos >= 0:
                spans.append((pos, pos + len(candidate)))
                break
        else:
            raise ValueError(
                f"message {i} contains special-token text and the template changes the content, so it cannot "
                "be kept out of the special-token path; remove the special-token strings from the content"
            )
    return spans


def _encode_plain_with_offsets(tok: TokenizerLike, text: str) -> list[tuple[int, int]]:
    """(id, start_char) for ``text`` encoded without specials."""
    fn = getattr(tok, "encode_with_offsets", None)
    if fn is not None:
        return [(i, start) for i, start, _ in fn(text)]
    # Byte-level BPE: the tokens' bytes concatenate to the text, so a byte offset -> character map suffices.
    char_at_byte: list[int] = []
    for k, ch in enumerate(text):
        char_at_byte += [k] * len(ch.encode("utf-8"))
    char_at_byte.append(len(text))
    out, pos = [], 0
    for i in tok.encode(text, allowed_special="none"):
        out.append((i, char_at_byte[min(pos, len(char_at_byte) - 1)]))
        pos += len(tok.token_bytes(i))
    return out


def render_chat_jinja(
    tok: TokenizerLike,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    template: str | None = None,
) -> RenderedChat:
    """Render with a Jinja template and compute the assistant mask by incremental prefix diffs."""
    source = template if template is not None else getattr(tok, "chat_template", None)
    if not isinstance(source, str):
        raise ValueError("tokenizer has no Jinja chat template")
    msgs = validate_messages(messages)
    render = _Renderer(tok, source, validate_tools(tools))
    full, assistant_spans, segments = _char_mask_spans(render, msgs, add_generation_prompt)
    specials = tok.special_tokens
    positions = _special_positions(full, specials, _content_spans(full, msgs, segments, specials))

    # Trim whitespace that follows the last special token of an assistant span (e.g. "\n" after <|im_end|>).
    trimmed = []
    for a, b in assistant_spans:
        inside = [e for s, e, _ in positions if a <= s and e <= b]
        if inside and full[max(inside) : b].strip() == "":
            b = max(inside)
        trimmed.append((a, b))

    def masked(pos: int) -> int:
        return int(any(a <= pos < b for a, b in trimmed))

    ids: list[int] = []
    mask: list[int] = []
    cursor = 0
    for s, e, sid in [*positions, (len(full), len(full), -1)]:
        if s > cursor:
            for tid, off in _encode_plain_with_offsets(tok, full[cursor:s]):
                ids.append(tid)
                mask.append(masked(cursor + off))
        if sid >= 0:
            ids.append(sid)
            mask.append(masked(s))
        cursor = e
    return RenderedChat(ids, mask)


# ---------------------------------------------------------------------------------------------------
# Export: native template dict -> equivalent Jinja source.
# ---------------------------------------------------------------------------------------------------


def _lit(s: str) -> str:
    return json.dumps(s)  # an ASCII-only double-quoted literal that Jinja parses identically


def native_to_jinja(template: str | Mapping[str, Any]) -> str:
    """A Jinja template that renders exactly like ``render_chat_text`` with this native template."""
    tpl = get_template(template)

    def header(role_expr: str) -> str:
        parts = []
        for seg in tpl["header"]:
            if "special" in seg:
                parts.append(_lit(seg["special"]))
            else:
                before, _, after = seg["text"].partition("{role}")
                if "{role}" in seg["text"]:
                    parts.append(f"{_lit(before)} + {role_expr} + {_lit(after)}")
                else:
                    parts.append(_lit(seg["text"]))
        return "{{- " + " + ".join(parts) + " -}}"

    names = "{" + ", ".join(f"{_lit(r)}: {_lit(tpl['role_names'][r])}" for r in ROLES) + "}"
    call = '{"name": tc.name, "arguments": tc.arguments}'
    lines = [
        "{%- set role_names = " + names + " -%}",
        ("{{- " + _lit(tpl["bos"]) + " -}}") if tpl.get("bos") else "",
        "{%- set ns = namespace(msgs=messages, block=" + _lit(tpl["tools_intro"]) + ") -%}",
        "{%- if tools -%}",
        '{%- for t in tools -%}{%- set ns.block = ns.block + "\\n" + (t | tojson) -%}{%- endfor -%}',
        "{%- set block = ns.block + " + _lit(tpl["tools_outro"]) + " -%}",
        "{%- if messages and messages[0].role == 'system' -%}",
        "{%- set sys = messages[0].content + '\\n\\n' + block if messages[0].content else block -%}",
        "{%- set ns.msgs = [{'role': 'system', 'content': sys}] + messages[1:] -%}",
        "{%- else -%}{%- set ns.msgs = [{'role': 'system', 'content': block}] + messages -%}{%- endif -%}",
        "{%- endif -%}",
        "{%- for m in ns.msgs -%}",
        header("role_names[m.role]"),
        "{{- m.content -}}",
        "{%- for tc in (m.tool_calls or []) -%}",
        '{%- if m.content or not loop.first -%}{{- "\\n" -}}{%- endif -%}',
        "{{- "
        + _lit(tpl["tool_call_start"])
        + ' + "\\n" + ('
        + call
        + ' | tojson) + "\\n" + '
        + _lit(tpl["tool_call_end"])
        + " -}}",
        "{%- endfor -%}",
        "{{- " + _lit(tpl["turn_end"]) + " + " + _lit(tpl["turn_sep"]) + " -}}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}" + header(_lit(tpl["role_names"]["assistant"])) + "{%- endif -%}",
    ]
    return "\n".join(line for line in lines if line)


__all__ = ["native_to_jinja", "render_chat_jinja", "render_jinja_text", "tool_call_json"]
