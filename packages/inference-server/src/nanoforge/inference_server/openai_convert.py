"""OpenAI JSON <-> the server's types: request bodies to ``GenerateInput`` and results to response dicts.

What it does: reads the fields of ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/embeddings``
bodies with OpenAI's names and defaults (``max_tokens`` 16 for completions, ``stop`` as a string or list,
legacy ``logprobs`` as a count), and builds ``choices`` / ``delta`` / ``usage`` / ``logprobs`` dicts in
OpenAI's shapes. Every bad field raises ``InvalidRequest`` with ``.field`` set to OpenAI's ``param`` name.

What it deliberately does not do: HTTP (status codes, auth, streaming: ``http_server``).
"""

from __future__ import annotations

import base64
import json
import math
import struct
import uuid
from typing import Any

from nanoforge.inference_server.convert import DEFAULT_MAX_NEW_TOKENS, Limits
from nanoforge.inference_server.errors import InvalidRequest
from nanoforge.inference_server.types import GenerationChunk, SamplingOptions, Usage


def bad(param: str, value: Any, accepted: str) -> InvalidRequest:
    err = InvalidRequest(f"{param}={value!r} is invalid; accepted: {accepted}")
    err.field = param  # type: ignore[attr-defined]
    return err


def _get(body: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any, accepted: str) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise bad(key, value, accepted)
    return value


def sampling_options(body: dict[str, Any], *, chat: bool, limits: Limits) -> SamplingOptions:
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise bad(key, body[key], "0 (not supported by this server)")
    max_tokens = body.get("max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_NEW_TOKENS if chat else 16  # OpenAI's completions default is 16
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= limits.max_new_tokens
    ):
        raise bad("max_tokens", max_tokens, f"an int in [1, {limits.max_new_tokens}]")
    stop = body.get("stop")
    stop_list = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop_list, list):
        raise bad("stop", stop, "a string or a list of strings")
    if chat:
        logprobs = bool(_get(body, "logprobs", (bool,), False, "true or false"))
        top = _get(body, "top_logprobs", (int,), 0, "an int in [0, 20]")
    else:  # legacy completions: logprobs is the number of alternatives
        n_alt = _get(body, "logprobs", (int,), None, "an int in [0, 5] or null")
        logprobs, top = n_alt is not None, n_alt or 0
    options = SamplingOptions(
        temperature=_get(body, "temperature", (int, float), 1.0, "a number in [0, 2]"),
        top_p=_get(body, "top_p", (int, float), 1.0, "a number in (0, 1]"),
        top_k=_get(body, "top_k", (int,), 0, "an int >= 0"),
        min_p=_get(body, "min_p", (int, float), 0.0, "a number in [0, 1)"),
        repetition_penalty=_get(body, "repetition_penalty", (int, float), 1.0, "a number in (0, 10]"),
        seed=_get(body, "seed", (int,), None, "an int >= 0"),
        max_new_tokens=max_tokens,
        stop=stop_list,
        logprobs=logprobs,
        top_logprobs=top,
    )
    return options.validate()


def response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    rf = body.get("response_format")
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_schema", "schema": {"type": "object"}}
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad("response_format.json_schema.schema", schema, "a JSON Schema object")
        return {"type": "json_schema", "schema": schema}
    if kind in ("regex", "choice"):  # nanoforge extensions, the same dicts as GenerateInput takes
        return dict(rf)
    raise bad("response_format.type", kind, "text, json_object, json_schema, regex or choice")


def sample_count(body: dict[str, Any], limits: Limits, stream: bool) -> int:
    n = _get(body, "n", (int,), 1, f"an int in [1, {limits.max_n}]")
    if not 1 <= n <= limits.max_n:
        raise bad("n", n, f"an int in [1, {limits.max_n}]")
    if n > 1 and stream:
        raise bad("n", n, "1 when stream is true")
    return n


def usage_json(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
        # nanoforge extension: the per-phase timings every reply carries (milliseconds).
        "timing_ms": {
            "queue": u.queue_ms,
            "prefill": u.prefill_ms,
            "decode": u.decode_ms,
            "total": u.total_ms,
        },
    }


def chat_logprobs(chunk: GenerationChunk) -> dict[str, Any] | None:
    if not chunk.logprobs:
        return None
    content = [
        {
            "token": lp.text,
            "logprob": lp.logprob,
            "bytes": list(lp.text.encode()),
            "top_logprobs": [{"token": s, "logprob": v, "bytes": list(s.encode())} for _, s, v in lp.top],
        }
        for lp in chunk.logprobs
    ]
    return {"content": content}


def completion_logprobs(chunk: GenerationChunk) -> dict[str, Any] | None:
    if not chunk.logprobs:
        return None
    return {
        "tokens": [lp.text for lp in chunk.logprobs],
        "token_logprobs": [lp.logprob for lp in chunk.logprobs],
        "top_logprobs": [{s: v for _, s, v in lp.top} for lp in chunk.logprobs],
        "text_offset": [],
    }


def sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def is_text_or_ids(x: Any) -> bool:
    if isinstance(x, str):
        return bool(x)
    return (
        isinstance(x, list)
        and bool(x)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in x)
    )


def text_content(message: dict[str, Any], i: int) -> dict[str, Any]:
    """OpenAI allows content as a list of parts; this server takes text parts only."""
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad(f"messages[{i}].content", "<non-text part>", "a string or a list of text parts")
            texts.append(str(part.get("text", "")))
        message = {**message, "content": "".join(texts)}
    return message


def encode_vector(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "float":
        return [float(x) if math.isfinite(x) else 0.0 for x in vector]
    return base64.b64encode(
        struct.pack(f"<{len(vector)}f", *vector)
    ).decode()  # OpenAI: little-endian float32


def choice_json(result: GenerationChunk, index: int, chat: bool) -> dict[str, Any]:
    if not chat:
        return {
            "index": index,
            "text": result.text,
            "logprobs": completion_logprobs(result),
            "finish_reason": result.finish_reason,
        }
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        message["tool_calls"] = result.tool_calls
    return {
        "index": index,
        "message": message,
        "logprobs": chat_logprobs(result),
        "finish_reason": result.finish_reason,
    }


def delta_json(chunk: GenerationChunk, chat: bool) -> dict[str, Any]:
    if not chat:
        return {
            "index": 0,
            "text": chunk.text,
            "logprobs": completion_logprobs(chunk),
            "finish_reason": chunk.finish_reason,
        }
    delta: dict[str, Any] = {"content": chunk.text} if chunk.text or chunk.finish_reason is None else {}
    if chunk.tool_calls:
        delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(chunk.tool_calls)]
    return {
        "index": 0,
        "delta": delta,
        "logprobs": chat_logprobs(chunk),
        "finish_reason": chunk.finish_reason,
    }
