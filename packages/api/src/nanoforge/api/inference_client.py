"""A small typed client for nanoforge's InferenceService, blocking and asyncio flavours.

What it does: builds requests from plain Python values (a prompt as text, token ids or chat-message
dicts; sampling knobs as keyword arguments), calls the generated stubs over a channel from
:mod:`nanoforge.api.client` (bearer token, TLS, size limits) with a default timeout, and returns the
reply messages (typed by their ``.pyi`` stubs)::

    from nanoforge.api.inference_client import InferenceClient

    with InferenceClient("127.0.0.1:50051", token="s3cret") as client:
        reply = client.generate("Once upon a time", max_new_tokens=32, temperature=0.0)
        print(reply.completions[0].text, reply.usage.completion_tokens)
        for chunk in client.generate_stream([{"role": "user", "content": "hi"}], max_new_tokens=16):
            print(chunk.text, end="")
        client.load_adapter("sql", "/models/lora-sql")          # then generate(..., adapter="sql")
        client.generate([{"role": "user", "content": "2+3?"}], tools=[add_tool], tool_choice="required")

What it deliberately does not do: retries, load balancing, or depend on the server package; errors come
back as ``grpc.RpcError`` / ``grpc.aio.AioRpcError`` with the server's status code and message.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from nanoforge.api.client import DEFAULT_MAX_MESSAGE_BYTES, make_channel, make_sync_channel
from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2, inference_pb2_grpc

#: A prompt: text, token ids, or chat messages ``[{"role": "user", "content": "..."}]``.
Prompt = str | Sequence[int] | Sequence[Mapping[str, Any]]

_ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
}

_POOLINGS = {"": inference_pb2.POOLING_UNSPECIFIED, "mean": inference_pb2.POOLING_MEAN}
_POOLINGS["last_token"] = inference_pb2.POOLING_LAST_TOKEN


def chat_message(message: Mapping[str, Any]) -> common_pb2.ChatMessage:
    """``{"role": "user", "content": "hi"}`` -> ``ChatMessage(role=ROLE_USER, content="hi")``.

    Tool calls may be given in OpenAI shape (``{"id", "function": {"name", "arguments"}}``).

    Raises:
        ValueError: on an unknown role.
    """
    role = message.get("role")
    if role not in _ROLES:
        raise ValueError(f"bad chat role {role!r}; accepted: {sorted(_ROLES)}")
    calls = []
    for call in message.get("tool_calls") or ():
        fn = call.get("function", call)
        calls.append(
            common_pb2.ToolCall(
                id=str(call.get("id", "")),
                name=str(fn.get("name", "")),
                arguments_json=str(fn.get("arguments", "")),
            )
        )
    return common_pb2.ChatMessage(
        role=_ROLES[role],
        content=str(message.get("content") or ""),
        name=str(message.get("name") or ""),
        tool_calls=calls,
        tool_call_id=str(message.get("tool_call_id") or ""),
    )


def sampling_params(
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    max_new_tokens: int = 0,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    logprobs: bool = False,
    top_logprobs: int = 0,
) -> common_pb2.SamplingParams:
    """A ``SamplingParams`` message; None leaves an optional field unset (the server's default)."""
    params = common_pb2.SamplingParams(
        max_new_tokens=max_new_tokens,
        stop=list(stop),
        stop_token_ids=list(stop_token_ids),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
    optional: dict[str, float | int | None] = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(params, name, value)
    return params


def _prompt_fields(prompt: Prompt) -> dict[str, Any]:
    if isinstance(prompt, str):
        return {"text": prompt}
    items: list[Any] = list(prompt)
    if all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        return {"token_ids": common_pb2.TokenIds(ids=items)}
    if all(isinstance(m, Mapping) for m in items):
        return {"messages": common_pb2.ChatMessages(messages=[chat_message(m) for m in items])}
    raise ValueError("bad prompt: expected text, a list of token ids, or a list of chat-message dicts")


def _response_format(spec: Mapping[str, Any] | None) -> common_pb2.ResponseFormat | None:
    """``{"json_schema": "{...}"}`` | ``{"regex": "..."}`` | ``{"choices": [...]}`` -> ResponseFormat."""
    if spec is None:
        return None
    if "choices" in spec:
        return common_pb2.ResponseFormat(choices=common_pb2.Choices(values=list(spec["choices"])))
    if "json_schema" in spec:
        return common_pb2.ResponseFormat(json_schema=str(spec["json_schema"]))
    if "regex" in spec:
        return common_pb2.ResponseFormat(regex=str(spec["regex"]))
    raise ValueError(f"bad response_format {dict(spec)!r}; accepted keys: json_schema, regex, choices")


_TOOL_CHOICE_MODES = {
    "none": common_pb2.TOOL_CHOICE_MODE_NONE,
    "auto": common_pb2.TOOL_CHOICE_MODE_AUTO,
    "required": common_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


def tool_definition(tool: common_pb2.ToolDefinition | Mapping[str, Any]) -> common_pb2.ToolDefinition:
    """An OpenAI-shaped tool dict (``{"type": "function", "function": {"name", "description",
    "parameters"}}``, or just the inner function dict) -> ``ToolDefinition``; a message passes through.

    Raises:
        ValueError: when the tool has no name.
    """
    if isinstance(tool, common_pb2.ToolDefinition):
        return tool
    fn = tool.get("function", tool)
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"bad tool {dict(tool)!r}: it needs a function name")
    params = fn.get("parameters")
    return common_pb2.ToolDefinition(
        name=name,
        description=str(fn.get("description") or ""),
        parameters_json_schema=json.dumps(params) if params is not None else "",
    )


def tool_choice_message(choice: str | Mapping[str, Any] | None) -> common_pb2.ToolChoice | None:
    """``"none"`` | ``"auto"`` | ``"required"`` | ``{"type": "function", "function": {"name": "f"}}`` ->
    ``ToolChoice`` (None stays unset, which the server treats as auto).

    Raises:
        ValueError: on another string or a dict without a function name.
    """
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_MODES:
            raise ValueError(
                f"bad tool_choice {choice!r}; accepted: none, auto, required or "
                '{"type": "function", "function": {"name": ...}}'
            )
        return common_pb2.ToolChoice(mode=_TOOL_CHOICE_MODES[choice])
    name = (choice.get("function") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"bad tool_choice {dict(choice)!r}; accepted: none, auto, required or "
            '{"type": "function", "function": {"name": ...}}'
        )
    return common_pb2.ToolChoice(function_name=name)


def generate_request(
    prompt: Prompt,
    *,
    model: str = "",
    adapter: str = "",
    n: int = 1,
    request_id: str = "",
    response_format: Mapping[str, Any] | None = None,
    tools: Sequence[common_pb2.ToolDefinition | Mapping[str, Any]] = (),
    tool_choice: str | Mapping[str, Any] | None = None,
    **sampling: Any,
) -> inference_pb2.GenerateRequest:
    """A ``GenerateRequest``; ``sampling`` takes the keyword arguments of :func:`sampling_params`.

    ``tools`` are ``ToolDefinition`` messages or OpenAI-shaped dicts (:func:`tool_definition`);
    ``tool_choice`` is none / auto / required or ``{"type": "function", "function": {"name": ...}}``
    (:func:`tool_choice_message`; unset: auto). Tools need a chat-message prompt.
    """
    return inference_pb2.GenerateRequest(
        model=model,
        adapter=adapter,
        sampling=sampling_params(**sampling),
        response_format=_response_format(response_format),
        tools=[tool_definition(t) for t in tools],
        tool_choice=tool_choice_message(tool_choice),
        n=n,
        request_id=request_id,
        **_prompt_fields(prompt),
    )


def _stream_request(request: inference_pb2.GenerateRequest) -> inference_pb2.GenerateStreamRequest:
    # The two messages share field names and numbers, so the wire bytes carry over unchanged.
    return inference_pb2.GenerateStreamRequest.FromString(request.SerializeToString())


def score_request(
    context: str | Sequence[int],
    continuations: Sequence[str | Sequence[int]],
    *,
    model: str = "",
    adapter: str = "",
    token_logprobs: bool = False,
    top_logprobs: int = 0,
) -> inference_pb2.ScoreRequest:
    """A ``ScoreRequest``: log P(continuation | context) for each continuation."""
    conts = [
        inference_pb2.Continuation(text=c)
        if isinstance(c, str)
        else inference_pb2.Continuation(token_ids=common_pb2.TokenIds(ids=list(c)))
        for c in continuations
    ]
    ctx = (
        {"text": context}
        if isinstance(context, str)
        else {"token_ids": common_pb2.TokenIds(ids=list(context))}
    )
    return inference_pb2.ScoreRequest(
        model=model,
        adapter=adapter,
        continuations=conts,
        token_logprobs=token_logprobs,
        top_logprobs=top_logprobs,
        **ctx,
    )


def embed_request(
    inputs: Sequence[str],
    *,
    model: str = "",
    adapter: str = "",
    normalize: bool = True,
    pooling: str = "",
    truncate: bool = False,
) -> inference_pb2.EmbedRequest:
    """An ``EmbedRequest``; ``pooling`` is "" (model default), "mean" or "last_token"; ``adapter`` names a
    loaded LoRA adapter ("" = the base model)."""
    if pooling not in _POOLINGS:
        raise ValueError(f"bad pooling {pooling!r}; accepted: {sorted(_POOLINGS)}")
    if isinstance(inputs, str):
        raise ValueError("embed inputs must be a list of strings, not one string")
    return inference_pb2.EmbedRequest(
        model=model,
        adapter=adapter,
        inputs=list(inputs),
        normalize=normalize,
        pooling=_POOLINGS[pooling],
        truncate=truncate,
    )


def adapter_load_request(
    name: str, path: str | os.PathLike[str], *, model: str = "", replace: bool = False
) -> inference_pb2.LoadAdapterRequest:
    """A ``LoadAdapterRequest``; ``path`` is sent as given: it is read on the server's disk.

    Raises:
        ValueError: on an empty name or path.
    """
    if not name:
        raise ValueError("adapter name is empty; accepted: [A-Za-z0-9_.-]{1,64}")
    if not str(path):
        raise ValueError("adapter path is empty; give the adapter directory on the server's disk")
    return inference_pb2.LoadAdapterRequest(model=model, name=name, path=os.fspath(path), replace=replace)


class _Base:
    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self.timeout = timeout

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout


class InferenceClient(_Base):
    """Blocking client. Every method takes ``timeout`` (seconds; default: the client's ``timeout``)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = 120.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(timeout)
        self.channel: grpc.Channel = make_sync_channel(
            target,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            max_message_bytes=max_message_bytes,
            options=options,
        )
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)

    def generate(
        self, prompt: Prompt, *, timeout: float | None = None, **kw: Any
    ) -> inference_pb2.GenerateResponse:
        """Generate and wait for the whole answer; ``kw`` as in :func:`generate_request`."""
        return self.stub.Generate(generate_request(prompt, **kw), timeout=self._t(timeout))

    def generate_stream(
        self, prompt: Prompt, *, timeout: float | None = None, **kw: Any
    ) -> Iterator[inference_pb2.GenerateStreamResponse]:
        """Stream chunks as they are produced; breaking out of the loop cancels the call on the server."""
        call = self.stub.GenerateStream(
            _stream_request(generate_request(prompt, **kw)), timeout=self._t(timeout)
        )
        try:
            yield from call
        finally:
            call.cancel()  # no-op when the stream already finished

    def score(
        self,
        context: str | Sequence[int],
        continuations: Sequence[str | Sequence[int]],
        *,
        timeout: float | None = None,
        **kw: Any,
    ) -> inference_pb2.ScoreResponse:
        """Log-likelihood of each continuation given the context."""
        return self.stub.Score(score_request(context, continuations, **kw), timeout=self._t(timeout))

    def embed(
        self, inputs: Sequence[str], *, timeout: float | None = None, **kw: Any
    ) -> inference_pb2.EmbedResponse:
        """One vector per input text."""
        return self.stub.Embed(embed_request(inputs, **kw), timeout=self._t(timeout))

    def tokenize(
        self,
        text: str,
        *,
        model: str = "",
        allow_special: bool = False,
        return_pieces: bool = False,
        timeout: float | None = None,
    ) -> inference_pb2.TokenizeResponse:
        """Token ids of ``text`` under the served model's tokenizer."""
        request = inference_pb2.TokenizeRequest(
            model=model, text=text, allow_special=allow_special, return_pieces=return_pieces
        )
        return self.stub.Tokenize(request, timeout=self._t(timeout))

    def detokenize(
        self,
        token_ids: Sequence[int],
        *,
        model: str = "",
        skip_special_tokens: bool = False,
        timeout: float | None = None,
    ) -> inference_pb2.DetokenizeResponse:
        """Text of ``token_ids``."""
        request = inference_pb2.DetokenizeRequest(
            model=model, token_ids=list(token_ids), skip_special_tokens=skip_special_tokens
        )
        return self.stub.Detokenize(request, timeout=self._t(timeout))

    def list_models(self, *, timeout: float | None = None) -> inference_pb2.ListModelsResponse:
        """The served models and their adapters."""
        return self.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=self._t(timeout))

    def load_adapter(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        model: str = "",
        replace: bool = False,
        timeout: float | None = None,
    ) -> inference_pb2.LoadAdapterResponse:
        """Load the PEFT LoRA directory ``path`` (on the server's disk) as adapter ``name``.

        Raises ``grpc.RpcError``: ALREADY_EXISTS for a taken name without ``replace``, INVALID_ARGUMENT for
        a directory that is not a loadable adapter.
        """
        request = adapter_load_request(name, path, model=model, replace=replace)
        return self.stub.LoadAdapter(request, timeout=self._t(timeout))

    def unload_adapter(
        self, name: str, *, model: str = "", timeout: float | None = None
    ) -> inference_pb2.UnloadAdapterResponse:
        """Unload adapter ``name``; NOT_FOUND if none has that name."""
        request = inference_pb2.UnloadAdapterRequest(model=model, name=name)
        return self.stub.UnloadAdapter(request, timeout=self._t(timeout))

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncInferenceClient(_Base):
    """asyncio twin of :class:`InferenceClient` (same methods, awaited; streams are async iterators)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = 120.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(timeout)
        self.channel: grpc.aio.Channel = make_channel(
            target,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            max_message_bytes=max_message_bytes,
            options=options,
        )
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)

    async def generate(
        self, prompt: Prompt, *, timeout: float | None = None, **kw: Any
    ) -> inference_pb2.GenerateResponse:
        """Generate and wait for the whole answer; ``kw`` as in :func:`generate_request`."""
        return await self.stub.Generate(generate_request(prompt, **kw), timeout=self._t(timeout))

    async def generate_stream(
        self, prompt: Prompt, *, timeout: float | None = None, **kw: Any
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        """Stream chunks; leaving the loop early cancels the call on the server."""
        call = self.stub.GenerateStream(
            _stream_request(generate_request(prompt, **kw)), timeout=self._t(timeout)
        )
        try:
            async for chunk in call:
                yield chunk
        finally:
            call.cancel()

    async def score(
        self,
        context: str | Sequence[int],
        continuations: Sequence[str | Sequence[int]],
        *,
        timeout: float | None = None,
        **kw: Any,
    ) -> inference_pb2.ScoreResponse:
        """Log-likelihood of each continuation given the context."""
        return await self.stub.Score(score_request(context, continuations, **kw), timeout=self._t(timeout))

    async def embed(
        self, inputs: Sequence[str], *, timeout: float | None = None, **kw: Any
    ) -> inference_pb2.EmbedResponse:
        """One vector per input text."""
        return await self.stub.Embed(embed_request(inputs, **kw), timeout=self._t(timeout))

    async def tokenize(
        self,
        text: str,
        *,
        model: str = "",
        allow_special: bool = False,
        return_pieces: bool = False,
        timeout: float | None = None,
    ) -> inference_pb2.TokenizeResponse:
        """Token ids of ``text`` under the served model's tokenizer."""
        request = inference_pb2.TokenizeRequest(
            model=model, text=text, allow_special=allow_special, return_pieces=return_pieces
        )
        return await self.stub.Tokenize(request, timeout=self._t(timeout))

    async def detokenize(
        self,
        token_ids: Sequence[int],
        *,
        model: str = "",
        skip_special_tokens: bool = False,
        timeout: float | None = None,
    ) -> inference_pb2.DetokenizeResponse:
        """Text of ``token_ids``."""
        request = inference_pb2.DetokenizeRequest(
            model=model, token_ids=list(token_ids), skip_special_tokens=skip_special_tokens
        )
        return await self.stub.Detokenize(request, timeout=self._t(timeout))

    async def list_models(self, *, timeout: float | None = None) -> inference_pb2.ListModelsResponse:
        """The served models and their adapters."""
        return await self.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=self._t(timeout))

    async def load_adapter(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        model: str = "",
        replace: bool = False,
        timeout: float | None = None,
    ) -> inference_pb2.LoadAdapterResponse:
        """Load the PEFT LoRA directory ``path`` (on the server's disk) as adapter ``name``."""
        request = adapter_load_request(name, path, model=model, replace=replace)
        return await self.stub.LoadAdapter(request, timeout=self._t(timeout))

    async def unload_adapter(
        self, name: str, *, model: str = "", timeout: float | None = None
    ) -> inference_pb2.UnloadAdapterResponse:
        """Unload adapter ``name``; NOT_FOUND if none has that name."""
        request = inference_pb2.UnloadAdapterRequest(model=model, name=name)
        return await self.stub.UnloadAdapter(request, timeout=self._t(timeout))

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
