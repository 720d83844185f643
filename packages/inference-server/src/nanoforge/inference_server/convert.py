"""Protobuf messages <-> the server's Python types (``types.py``), plus what both servers share: limits, n samples.

What it does: turns ``GenerateRequest`` / ``SamplingParams`` / ``ChatMessage`` / ``ToolDefinition`` /
``ToolChoice`` / ``ResponseFormat`` into a validated ``GenerateInput``; turns ``GenerationChunk`` / ``Usage`` /
``TokenLogprob`` / tool calls / score and model-info dicts back into reply messages. Every bad field raises
``InvalidRequest`` naming the field (as a dotted proto path), the value and what is accepted.

What it deliberately does not do: call the model, or know anything about HTTP/JSON (``http_server``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2
from nanoforge.inference_server.errors import InvalidRequest
from nanoforge.inference_server.types import (
    GenerateInput,
    GenerationChunk,
    SamplingOptions,
    TokenLogprob,
    Usage,
)

#: Proto's documented default for ``max_new_tokens == 0``.
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class Limits:
    """Per-request size limits checked before anything reaches the model (both gRPC and HTTP).

    Attributes:
        max_prompt_chars: longest prompt text (or sum of chat message contents), in characters.
        max_prompt_ids: most token ids in a prompt given as ids.
        max_new_tokens: most tokens one sample may ask for.
        max_n: most samples per request.
        max_batch_items: most inputs of one Embed / continuations of one Score call.
    """

    max_prompt_chars: int = 1_000_000
    max_prompt_ids: int = 131_072
    max_new_tokens: int = 8192
    max_n: int = 16
    max_batch_items: int = 256


_ROLE_NAMES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
}

FINISH_TO_PROTO = {
    None: common_pb2.FINISH_REASON_UNSPECIFIED,
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "cancelled": common_pb2.FINISH_REASON_CANCELLED,
    "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS,
}


def _bad(field: str, value: Any, accepted: str) -> InvalidRequest:
    err = InvalidRequest(f"{field}={value!r} is invalid; accepted: {accepted}")
    err.field = field  # type: ignore[attr-defined]  # read by the error interceptor's ErrorDetail
    return err


def check_count(field: str, count: int, limit: int) -> None:
    """Raise ``InvalidRequest`` when a list field has more than ``limit`` entries or none."""
    if count < 1:
        raise _bad(field, "[]", "at least one entry")
    if count > limit:
        raise _bad(field, f"<{count} entries>", f"at most {limit} entries")


def sampling_from_proto(p: common_pb2.SamplingParams, limits: Limits = Limits()) -> SamplingOptions:
    """``SamplingParams`` -> validated ``SamplingOptions`` (unset optionals take the documented defaults)."""
    unsupported = [
        name
        for name in ("presence_penalty", "frequency_penalty")
        if p.HasField(name) and getattr(p, name) != 0
    ]
    if unsupported:
        raise _bad(
            f"sampling.{unsupported[0]}", getattr(p, unsupported[0]), "0 (not supported by this server)"
        )
    if p.ignore_eos:
        raise _bad("sampling.ignore_eos", True, "false (not supported by this server)")
    if p.max_new_tokens > limits.max_new_tokens:
        raise _bad("sampling.max_new_tokens", p.max_new_tokens, f"0..{limits.max_new_tokens}")
    if p.top_logprobs and not p.logprobs:
        raise _bad("sampling.top_logprobs", p.top_logprobs, "0 unless sampling.logprobs is true")
    options = SamplingOptions(
        temperature=p.temperature if p.HasField("temperature") else 1.0,
        top_k=p.top_k if p.HasField("top_k") else 0,
        top_p=p.top_p if p.HasField("top_p") else 1.0,
        min_p=p.min_p if p.HasField("min_p") else 0.0,
        repetition_penalty=p.repetition_penalty if p.HasField("repetition_penalty") else 1.0,
        # The proto seed is uint64; the engine seeds torch with a signed 64-bit value, so fold the top bit.
        seed=p.seed % 2**63 if p.HasField("seed") else None,
        max_new_tokens=p.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        stop=list(p.stop),
        stop_token_ids=list(p.stop_token_ids),
        logprobs=p.logprobs,
        top_logprobs=p.top_logprobs,
    )
    try:
        return options.validate()
    except InvalidRequest as exc:  # "top_p=2.0 is invalid; ..." -> field "sampling.top_p"
        err = InvalidRequest(f"sampling.{exc}")
        err.field = "sampling." + str(exc).split("=", 1)[0]  # type: ignore[attr-defined]
        raise err from None


def messages_from_proto(messages: Iterable[common_pb2.ChatMessage]) -> list[dict[str, Any]]:
    """``ChatMessage`` list -> ``[{"role": "user", "content": ...}, ...]`` (OpenAI-shaped tool calls)."""
    out = []
    for i, m in enumerate(messages):
        if m.role not in _ROLE_NAMES:
            raise _bad(f"messages[{i}].role", m.role, "ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL")
        d: dict[str, Any] = {"role": _ROLE_NAMES[m.role], "content": m.content}
        if m.name:
            d["name"] = m.name
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            d["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
                for c in m.tool_calls
            ]
        out.append(d)
    if not out:
        raise _bad("messages", "[]", "at least one message")
    return out


def _json_field(field: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(field, text[:80], f"valid JSON text ({exc.msg} at char {exc.pos})") from None


def tools_from_proto(tools: Sequence[common_pb2.ToolDefinition]) -> list[dict[str, Any]] | None:
    """``ToolDefinition`` list -> OpenAI tool dicts ``{"type": "function", "function": {...}}``, None if empty."""
    out = []
    for i, t in enumerate(tools):
        params = (
            _json_field(f"tools[{i}].parameters_json_schema", t.parameters_json_schema)
            if (t.parameters_json_schema)
            else {"type": "object", "properties": {}}
        )
        fn = {"name": t.name, "description": t.description, "parameters": params}
        out.append({"type": "function", "function": fn})
    return out or None


def response_format_from_proto(rf: common_pb2.ResponseFormat) -> dict[str, Any] | None:
    """``ResponseFormat`` -> ``{"type": "json_schema", "schema": {...}}`` | regex | choice dict; None if unset."""
    kind = rf.WhichOneof("format")
    if kind is None:
        return None
    if kind == "json_schema":
        return {"type": "json_schema", "schema": _json_field("response_format.json_schema", rf.json_schema)}
    if kind == "regex":
        return {"type": "regex", "pattern": rf.regex}
    if not rf.choices.values:
        raise _bad("response_format.choices.values", [], "at least one string")
    return {"type": "choice", "choices": list(rf.choices.values)}


_TOOL_CHOICE_MODES = {
    common_pb2.TOOL_CHOICE_MODE_UNSPECIFIED: None,
    common_pb2.TOOL_CHOICE_MODE_NONE: "none",
    common_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    common_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
}


def tool_choice_from_proto(tc: common_pb2.ToolChoice) -> str | dict[str, Any] | None:
    """``ToolChoice`` -> "none" | "auto" | "required" | ``{"type": "function", "function": {"name": ...}}``.

    None when unset (auto). Whether the named tool exists is checked later, against the request's tools.
    """
    kind = tc.WhichOneof("choice")
    if kind is None:
        return None
    if kind == "function_name":
        if not tc.function_name:
            raise _bad("tool_choice.function_name", "", "the name of one of the request's tools")
        return {"type": "function", "function": {"name": tc.function_name}}
    if tc.mode not in _TOOL_CHOICE_MODES:
        raise _bad(
            "tool_choice.mode",
            tc.mode,
            "TOOL_CHOICE_MODE_NONE, TOOL_CHOICE_MODE_AUTO or TOOL_CHOICE_MODE_REQUIRED",
        )
    return _TOOL_CHOICE_MODES[tc.mode]


def generate_input_from_proto(
    req: inference_pb2.GenerateRequest | inference_pb2.GenerateStreamRequest,
    *,
    deadline: float | None,
    request_id: str,
    limits: Limits = Limits(),
) -> GenerateInput:
    """A ``Generate(Stream)Request`` -> validated ``GenerateInput`` (one sample; the servicer handles ``n``)."""
    kind = req.WhichOneof("prompt")
    prompt: dict[str, Any] = {}
    if kind == "text":
        if len(req.text) > limits.max_prompt_chars:
            raise _bad("text", f"<{len(req.text)} chars>", f"at most {limits.max_prompt_chars} characters")
        prompt["prompt"] = req.text
    elif kind == "token_ids":
        check_count("token_ids.ids", len(req.token_ids.ids), limits.max_prompt_ids)
        prompt["prompt_ids"] = list(req.token_ids.ids)
    elif kind == "messages":
        chars = sum(len(m.content) for m in req.messages.messages)
        if chars > limits.max_prompt_chars:
            raise _bad("messages", f"<{chars} chars>", f"at most {limits.max_prompt_chars} characters in all")
        prompt["messages"] = messages_from_proto(req.messages.messages)
    else:
        raise _bad("prompt", None, "exactly one of text, token_ids, messages")
    tools = tools_from_proto(req.tools)
    if tools and kind != "messages":
        raise _bad("tools", f"<{len(tools)} tools>", "tools only with a messages prompt")
    tool_choice = tool_choice_from_proto(req.tool_choice)
    if tool_choice not in (None, "none", "auto") and not tools:
        raise _bad("tool_choice", tool_choice, "none or auto unless tools are given")
    inp = GenerateInput(
        **prompt,
        options=sampling_from_proto(req.sampling, limits),
        adapter=req.adapter or None,
        response_format=response_format_from_proto(req.response_format),
        tools=tools,
        tool_choice=tool_choice,
        deadline=deadline,
        request_id=request_id,
    )
    return inp.validate()


def sample_count(n: int, limits: Limits = Limits()) -> int:
    """Proto ``n`` (0 or 1: one) -> number of samples, checked against the limit."""
    if n > limits.max_n:
        raise _bad("n", n, f"0..{limits.max_n}")
    return max(1, n)


def sample_inputs(inp: GenerateInput, n: int) -> list[GenerateInput]:
    """``n`` copies of one request; with a seed, sample i uses seed + i so that the samples differ."""
    if n == 1:
        return [inp]
    out = []
    for i in range(n):
        seed = None if inp.options.seed is None else (inp.options.seed + i) % 2**63
        options = dataclasses.replace(inp.options, seed=seed)
        out.append(dataclasses.replace(inp, options=options, request_id=f"{inp.request_id}/{i}"))
    return out


async def complete_all(model: Any, inputs: Sequence[GenerateInput]) -> list[GenerationChunk]:
    """``model.complete`` of every input concurrently; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(model.complete(x)) for x in inputs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def usage_to_proto(usage: Usage | None, *, total_ms: float | None = None) -> common_pb2.Usage:
    """``Usage`` -> proto ``Usage``; ``total_ms`` overrides the total (the server's own end-to-end time)."""
    u = usage or Usage()
    return common_pb2.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        cached_prompt_tokens=u.cached_prompt_tokens,
        queue_time_ms=u.queue_ms,
        prefill_time_ms=u.prefill_ms,
        decode_time_ms=u.decode_ms,
        total_time_ms=u.total_ms if total_ms is None else max(total_ms, u.total_ms),
    )


def merge_usage(usages: Sequence[Usage | None]) -> Usage:
    """Usage of ``n`` samples of one prompt: the prompt counted once, completions summed, times maxed."""
    real = [u for u in usages if u is not None]
    if not real:
        return Usage()
    return Usage(
        prompt_tokens=real[0].prompt_tokens,
        completion_tokens=sum(u.completion_tokens for u in real),
        cached_prompt_tokens=real[0].cached_prompt_tokens,
        queue_ms=max(u.queue_ms for u in real),
        prefill_ms=max(u.prefill_ms for u in real),
        decode_ms=max(u.decode_ms for u in real),
        total_ms=max(u.total_ms for u in real),
        ttft_ms=min(u.ttft_ms for u in real),
    )


def logprobs_to_proto(logprobs: Iterable[TokenLogprob]) -> list[common_pb2.TokenLogprob]:
    """``TokenLogprob`` list -> proto ``TokenLogprob`` list (with their top alternatives)."""
    return [
        common_pb2.TokenLogprob(
            token_id=lp.token_id,
            text=lp.text,
            logprob=lp.logprob,
            top_logprobs=[common_pb2.LogprobCandidate(token_id=t, text=s, logprob=v) for t, s, v in lp.top],
        )
        for lp in logprobs
    ]


def tool_calls_to_proto(calls: Iterable[dict[str, Any]] | None) -> list[common_pb2.ToolCall]:
    """OpenAI-shaped tool calls -> proto ``ToolCall`` list (arguments kept as JSON text)."""
    out = []
    for call in calls or ():
        fn = call.get("function", {})
        args = fn.get("arguments", "")
        out.append(
            common_pb2.ToolCall(
                id=str(call.get("id", "")),
                name=str(fn.get("name", "")),
                arguments_json=args if isinstance(args, str) else json.dumps(args),
            )
        )
    return out


def chunk_to_stream_proto(
    chunk: GenerationChunk, *, index: int, model: str, request_id: str
) -> inference_pb2.GenerateStreamResponse:
    """One ``GenerationChunk`` -> ``GenerateStreamResponse`` (usage is set by the servicer on the last one)."""
    return inference_pb2.GenerateStreamResponse(
        index=index,
        text=chunk.text,
        token_ids=chunk.token_ids,
        logprobs=logprobs_to_proto(chunk.logprobs),
        finish_reason=FINISH_TO_PROTO.get(chunk.finish_reason, common_pb2.FINISH_REASON_STOP),
        tool_calls=tool_calls_to_proto(chunk.tool_calls),
        model=model,
        request_id=request_id,
    )


def completion_to_proto(chunk: GenerationChunk, *, index: int) -> inference_pb2.Completion:
    """An aggregated ``GenerationChunk`` (``ServingModel.complete``) -> ``Completion``."""
    return inference_pb2.Completion(
        index=index,
        text=chunk.text,
        token_ids=chunk.token_ids,
        finish_reason=FINISH_TO_PROTO.get(chunk.finish_reason, common_pb2.FINISH_REASON_STOP),
        logprobs=logprobs_to_proto(chunk.logprobs),
        tool_calls=tool_calls_to_proto(chunk.tool_calls),
    )


def _token_logprob_from_dict(d: Any) -> common_pb2.TokenLogprob:
    if isinstance(d, TokenLogprob):
        return logprobs_to_proto([d])[0]
    if isinstance(d, dict):
        top = [common_pb2.LogprobCandidate(token_id=t, text=s, logprob=v) for t, s, v in d.get("top", ())]
        return common_pb2.TokenLogprob(
            token_id=int(d.get("token_id", 0)),
            text=str(d.get("text", "")),
            logprob=float(d["logprob"]),
            top_logprobs=top,
        )
    return common_pb2.TokenLogprob(logprob=float(d))  # a bare float per token


def score_to_proto(result: dict[str, Any], *, token_logprobs: bool) -> inference_pb2.ContinuationScore:
    """One ``ServingModel.score`` result dict -> ``ContinuationScore``."""
    lps = [_token_logprob_from_dict(d) for d in result.get("token_logprobs") or ()] if token_logprobs else []
    return inference_pb2.ContinuationScore(
        logprob=float(result["logprob"]),
        num_tokens=int(result["num_tokens"]),
        is_greedy=bool(result["is_greedy"]),
        token_logprobs=lps,
    )


def adapter_info_to_proto(info: Any) -> inference_pb2.AdapterInfo:
    """An adapter description (a dict with AdapterInfo's field names, or just a name) -> ``AdapterInfo``."""
    if isinstance(info, str):
        return inference_pb2.AdapterInfo(name=info)
    fields = inference_pb2.AdapterInfo.DESCRIPTOR.fields_by_name
    return inference_pb2.AdapterInfo(**{k: v for k, v in dict(info).items() if k in fields and v is not None})


#: ``ServingModel.model_info()`` keys that ModelInfo names differently.
_MODEL_INFO_ALIASES = {
    "max_seq_len": "context_length",
    "d_model": "embedding_dimension",
    "parameters": "num_parameters",
}


def model_info_to_proto(info: dict[str, Any], *, adapters: Iterable[Any] = ()) -> inference_pb2.ModelInfo:
    """``ServingModel.model_info()`` -> ``ModelInfo`` (aliases like ``max_seq_len`` mapped; other keys ignored)."""
    fields = inference_pb2.ModelInfo.DESCRIPTOR.fields_by_name
    renamed = {_MODEL_INFO_ALIASES.get(k, k): v for k, v in info.items()}
    plain = {k: v for k, v in renamed.items() if k in fields and k != "adapters" and v is not None}
    if "architecture" not in plain and isinstance(info.get("attention"), list):
        plain["architecture"] = "gpt(" + ",".join(map(str, info["attention"])) + ")"
    plain.setdefault("is_default", True)
    return inference_pb2.ModelInfo(**plain, adapters=[adapter_info_to_proto(a) for a in adapters])
