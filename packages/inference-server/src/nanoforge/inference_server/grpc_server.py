"""The InferenceService gRPC server: a servicer that converts protos and calls one ``ServingModel``.

What it does: ``InferenceServicer`` turns each request into the text layer's types (``convert``), awaits the
``ServingModel`` and converts the result back, adding a ``Usage`` to every reply. The client's deadline
becomes ``GenerateInput.deadline``; a cancelled call closes the model's stream, which frees the request's
slot at once. ``build_grpc_server`` assembles the server from the shared plumbing in
``nanoforge.api.server``: bearer auth (health checks exempt), one error-mapping interceptor (the
``InferenceError`` subclasses carry their own status), a metrics interceptor, health, reflection, TLS and
message-size limits.

What it deliberately does not do: decide status codes per method (the interceptor does), run the event
loop or handle signals (``cli``), or serve HTTP (``http_server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio
from grpc_health.v1._async import HealthServicer

from nanoforge.api import server as srv
from nanoforge.api.inference.v1 import inference_pb2, inference_pb2_grpc
from nanoforge.inference_server import convert
from nanoforge.inference_server.convert import Limits
from nanoforge.inference_server.errors import InferenceError, InvalidRequest, NotFound
from nanoforge.inference_server.metrics import ServerMetrics
from nanoforge.inference_server.types import GenerateInput, GenerationChunk, Usage
from nanoforge.tokenizer.chat import render_chat

if TYPE_CHECKING:
    from nanoforge.inference_server.text import ServingModel

#: Full name of the service, for health and reflection.
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + max(0.0, remaining)


async def _merge_streams(
    streams: Sequence[AsyncIterator[GenerationChunk]],
) -> AsyncGenerator[tuple[int, GenerationChunk], None]:
    """Interleave several chunk streams as ``(index, chunk)`` in arrival order; closes them all on exit."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:  # type: ignore[type-var]
            async for chunk in only:
                yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, GenerationChunk | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[GenerationChunk]) -> None:
        try:
            async with contextlib.aclosing(stream) as it:  # type: ignore[type-var]
                async for chunk in it:
                    await queue.put((i, chunk))
            await queue.put((i, None))
        except Exception as exc:
            await queue.put((i, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Converts protos <-> types and calls the ``ServingModel``; raises, never sets status codes itself."""

    def __init__(
        self, model: ServingModel, *, limits: Limits | None = None, metrics: ServerMetrics | None = None
    ):
        self.model = model
        self.limits = limits or Limits()
        self.metrics = metrics

    def _check_model(self, name: str) -> None:
        if name and name != self.model.name:
            raise NotFound(f"model {name!r} is not served; served models: [{self.model.name!r}]")

    def _render(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of a conversation with the chat template and the assistant prefix (as Generate sees it)."""
        try:
            return render_chat(self.model.tokenizer, messages, add_generation_prompt=True).ids
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"messages cannot be rendered with the chat template: {exc}") from None

    def _observe(self, usage: Usage | None) -> None:
        if self.metrics is not None:
            self.metrics.observe_usage(usage)

    def _input(self, request: Any, context: grpc.aio.ServicerContext) -> tuple[GenerateInput, int]:
        self._check_model(request.model)
        n = convert.sample_count(request.n, self.limits)
        request_id = request.request_id or uuid.uuid4().hex
        inp = convert.generate_input_from_proto(
            request, deadline=_deadline(context), request_id=request_id, limits=self.limits
        )
        return inp, n

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: Any
    ) -> inference_pb2.GenerateResponse:
        t0 = time.perf_counter()
        inp, n = self._input(request, context)
        results = await convert.complete_all(self.model, convert.sample_inputs(inp, n))
        usage = convert.merge_usage([r.usage for r in results])
        self._observe(usage)
        return inference_pb2.GenerateResponse(
            completions=[convert.completion_to_proto(r, index=i) for i, r in enumerate(results)],
            usage=convert.usage_to_proto(usage, total_ms=_ms_since(t0)),
            model=self.model.name,
            request_id=inp.request_id,
        )

    async def GenerateStream(
        self, request: inference_pb2.GenerateStreamRequest, context: Any
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        t0 = time.perf_counter()
        inp, n = self._input(request, context)
        streams = [self.model.generate(x) for x in convert.sample_inputs(inp, n)]
        usages: list[Usage | None] = []
        # Closing the merged stream (call cancelled, deadline, client gone) closes every model stream.
        async with contextlib.aclosing(_merge_streams(streams)) as merged:
            async for index, chunk in merged:
                reply = convert.chunk_to_stream_proto(
                    chunk, index=index, model=self.model.name, request_id=inp.request_id
                )
                if chunk.finish_reason is not None:
                    usages.append(chunk.usage)
                    if len(usages) == n:  # the very last message of the stream carries the Usage
                        usage = convert.merge_usage(usages)
                        self._observe(usage)
                        reply.usage.CopyFrom(convert.usage_to_proto(usage, total_ms=_ms_since(t0)))
                yield reply

    async def Score(self, request: inference_pb2.ScoreRequest, context: Any) -> inference_pb2.ScoreResponse:
        t0 = time.perf_counter()
        self._check_model(request.model)
        convert.check_count("continuations", len(request.continuations), self.limits.max_batch_items)
        if request.top_logprobs:
            raise InvalidRequest(
                f"top_logprobs={request.top_logprobs} is invalid; accepted: 0 (not supported)"
            )
        kind = request.WhichOneof("context")
        if kind == "messages":
            context_value: str | list[int] = self._render(
                convert.messages_from_proto(request.messages.messages)
            )
        elif kind == "token_ids":
            context_value = list(request.token_ids.ids)
        elif kind == "text":
            context_value = request.text
        else:
            raise InvalidRequest("context is not set; accepted: exactly one of text, token_ids, messages")
        continuations: list[str | list[int]] = []
        for i, c in enumerate(request.continuations):
            which = c.WhichOneof("continuation")
            value = c.text if which == "text" else list(c.token_ids.ids)
            if not value:
                raise InvalidRequest(f"continuations[{i}] is empty; accepted: non-empty text or token_ids")
            continuations.append(value)
        results, used = await self.model.score_with_usage(
            context_value, continuations, adapter=request.adapter or None
        )
        scores = [convert.score_to_proto(r, token_logprobs=request.token_logprobs) for r in results]
        usage = convert.usage_to_proto(used, total_ms=_ms_since(t0))
        return inference_pb2.ScoreResponse(scores=scores, usage=usage, model=self.model.name)

    async def Embed(self, request: inference_pb2.EmbedRequest, context: Any) -> inference_pb2.EmbedResponse:
        t0 = time.perf_counter()
        self._check_model(request.model)
        if request.pooling == inference_pb2.POOLING_LAST_TOKEN:
            raise InvalidRequest("pooling=POOLING_LAST_TOKEN is invalid; accepted: POOLING_MEAN (or unset)")
        if request.truncate:
            raise InvalidRequest("truncate=true is invalid; accepted: false (long inputs are rejected)")
        convert.check_count("inputs", len(request.inputs), self.limits.max_batch_items)
        for i, text in enumerate(request.inputs):
            if len(text) > self.limits.max_prompt_chars:
                raise InvalidRequest(
                    f"inputs[{i}] has {len(text)} chars; accepted: at most {self.limits.max_prompt_chars}"
                )
        ids = [self.model.tokenize(text) for text in request.inputs]
        vectors, used = await self.model.embed_with_usage(
            ids, normalize=request.normalize, adapter=request.adapter or None
        )
        embeddings = [
            inference_pb2.Embedding(values=v, num_tokens=len(t), truncated=False)
            for v, t in zip(vectors, ids)
        ]
        usage = convert.usage_to_proto(used, total_ms=_ms_since(t0))
        dim = len(vectors[0]) if vectors else 0
        return inference_pb2.EmbedResponse(
            embeddings=embeddings, dimension=dim, usage=usage, model=self.model.name
        )

    async def Tokenize(
        self, request: inference_pb2.TokenizeRequest, context: Any
    ) -> inference_pb2.TokenizeResponse:
        t0 = time.perf_counter()
        self._check_model(request.model)
        kind = request.WhichOneof("input")
        if kind == "messages":
            ids = self._render(convert.messages_from_proto(request.messages.messages))
        elif kind == "text":
            if len(request.text) > self.limits.max_prompt_chars:
                raise InvalidRequest(
                    f"text has {len(request.text)} chars; accepted: at most {self.limits.max_prompt_chars}"
                )
            # allow_special: special-token strings in the text become their ids (ServingModel.tokenize
            # always keeps them as plain text, so this one case goes to the tokenizer itself).
            ids = (
                list(self.model.tokenizer.encode(request.text, allowed_special="all"))
                if request.allow_special
                else self.model.tokenize(request.text)
            )
        else:
            raise InvalidRequest("input is not set; accepted: exactly one of text, messages")
        pieces = [self.model.detokenize([i]) for i in ids] if request.return_pieces else []
        usage = convert.usage_to_proto(Usage(prompt_tokens=len(ids)), total_ms=_ms_since(t0))
        return inference_pb2.TokenizeResponse(
            token_ids=ids, pieces=pieces, usage=usage, model=self.model.name
        )

    async def Detokenize(
        self, request: inference_pb2.DetokenizeRequest, context: Any
    ) -> inference_pb2.DetokenizeResponse:
        t0 = time.perf_counter()
        self._check_model(request.model)
        if request.skip_special_tokens:
            raise InvalidRequest("skip_special_tokens=true is invalid; accepted: false (not supported yet)")
        if len(request.token_ids) > self.limits.max_prompt_ids:
            count = len(request.token_ids)
            raise InvalidRequest(f"token_ids has {count} ids; accepted: at most {self.limits.max_prompt_ids}")
        text = self.model.detokenize(list(request.token_ids))
        usage = convert.usage_to_proto(Usage(prompt_tokens=len(request.token_ids)), total_ms=_ms_since(t0))
        return inference_pb2.DetokenizeResponse(text=text, usage=usage, model=self.model.name)

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: Any
    ) -> inference_pb2.ListModelsResponse:
        t0 = time.perf_counter()
        info = {"name": self.model.name, **self.model.model_info()}
        model = convert.model_info_to_proto(info, adapters=self.model.list_adapters())
        usage = convert.usage_to_proto(None, total_ms=_ms_since(t0))
        return inference_pb2.ListModelsResponse(models=[model], usage=usage)

    async def LoadAdapter(
        self, request: inference_pb2.LoadAdapterRequest, context: Any
    ) -> inference_pb2.LoadAdapterResponse:
        t0 = time.perf_counter()
        self._check_model(request.model)
        if request.name in {_adapter_name(a) for a in self.model.list_adapters()} and not request.replace:
            raise AdapterExists(
                f"adapter {request.name!r} is already loaded; pass replace=true to replace it"
            )
        info = await cast(Any, self.model.load_adapter)(request.name, request.path, replace=request.replace)
        adapter = convert.adapter_info_to_proto(
            info if info is not None else {"name": request.name, "path": request.path}
        )
        usage = convert.usage_to_proto(None, total_ms=_ms_since(t0))
        return inference_pb2.LoadAdapterResponse(adapter=adapter, usage=usage)

    async def UnloadAdapter(
        self, request: inference_pb2.UnloadAdapterRequest, context: Any
    ) -> inference_pb2.UnloadAdapterResponse:
        t0 = time.perf_counter()
        self._check_model(request.model)
        info = await cast(Any, self.model.unload_adapter)(request.name)
        adapter = convert.adapter_info_to_proto(info if info is not None else {"name": request.name})
        usage = convert.usage_to_proto(None, total_ms=_ms_since(t0))
        return inference_pb2.UnloadAdapterResponse(adapter=adapter, usage=usage)


class AdapterExists(InferenceError):
    """LoadAdapter without ``replace`` for a name already in use."""

    grpc_status = "ALREADY_EXISTS"
    http_status = 409


def _adapter_name(info: Any) -> str:
    return info if isinstance(info, str) else str(dict(info).get("name", ""))


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and final status code and records its wall time.

    Sits inside the error-mapping interceptor, so it sees the raw exception and names the status the
    client will get (``default_status_of``); a handler's own ``context.abort`` is read from the context.
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def _record(self, method: str, status: str, t0: float) -> None:
        self.metrics.observe_request("grpc", method.rsplit("/", 1)[-1], status, time.perf_counter() - t0)

    @staticmethod
    def _status(exc: BaseException | None, context: Any) -> str:
        if exc is None:
            return "OK"
        if isinstance(exc, asyncio.CancelledError):
            return "CANCELLED"
        if isinstance(exc, grpc.aio.AbortError):
            code = context.code()
            return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        return srv.default_status_of(exc)[0].name

    def _unary(self, method: str) -> srv.Wrapper:
        def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapped(request: Any, context: Any) -> Any:
                t0, error = time.perf_counter(), None
                try:
                    result = behavior(request, context)
                    return await result if inspect.isawaitable(result) else result
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._record(method, self._status(error, context), t0)

            return wrapped

        return wrap

    def _stream(self, method: str) -> srv.Wrapper:
        def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
                t0, error = time.perf_counter(), None
                try:
                    async for item in behavior(request, context):
                        yield item
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._record(method, self._status(error, context), t0)

            return wrapped

        return wrap

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return srv.rewrap_handler(handler, self._unary(method), self._stream(method))


def build_grpc_server(
    model: ServingModel,
    *,
    host: str = "127.0.0.1",
    port: int = 50051,
    token: str | None = None,
    credentials: grpc.ServerCredentials | None = None,
    metrics: ServerMetrics | None = None,
    limits: Limits | None = None,
    max_message_bytes: int = 16 * 1024 * 1024,
) -> tuple[grpc.aio.Server, HealthServicer, int]:
    """Assemble (not start) the InferenceService server and bind it.

    Args:
        model: The loaded ``ServingModel``.
        host: Interface to listen on (loopback by default).
        port: TCP port; 0 picks a free one (returned).
        token: Bearer token every call must carry (health checks exempt). None: no auth.
        credentials: TLS credentials (``nanoforge.api.server.server_credentials``). None: plaintext.
        metrics: Where call counts and latencies go. None: not recorded.
        limits: Request size limits. None: the defaults of ``Limits``.
        max_message_bytes: Largest gRPC message in either direction.

    Returns:
        ``(server, health, bound_port)``; call ``await server.start()`` then ``mark_serving``.
    """
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if token is not None:
        interceptors.append(srv.BearerAuthInterceptor(token))
    interceptors.append(srv.ErrorMappingInterceptor())
    if metrics is not None:
        interceptors.append(MetricsInterceptor(metrics))
    server = srv.create_server(interceptors, max_message_bytes=max_message_bytes)
    servicer = InferenceServicer(model, limits=limits, metrics=metrics)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health = srv.add_health_and_reflection(server, [SERVICE_NAME])
    bound = srv.bind(server, host, port, credentials)
    return server, health, bound
