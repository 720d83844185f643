"""The OpenAI-compatible HTTP API (Starlette app, served by uvicorn) over the same ``ServingModel``.

Routes: ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` -> server-sent events ``data: {...}`` ... ``data: [DONE]``;
``tools`` -> ``tool_calls``; ``response_format`` passed through), ``POST /v1/embeddings``. Errors use
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with the status of the error kind.
Auth: the same bearer token as gRPC (``Authorization: Bearer ...``, what the ``openai`` client sends);
``/health`` and ``/metrics`` stay open for probes and scrapers.

What it deliberately does not do: legacy ``echo``/``best_of``/``suffix``, presence/frequency penalties,
batched prompts in one completion request, or ``n`` > 1 with streaming (each is a clear 400).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from nanoforge.inference_server import openai_convert as oc
from nanoforge.inference_server.convert import Limits, complete_all, merge_usage, sample_inputs
from nanoforge.inference_server.errors import InferenceError, NotFound
from nanoforge.inference_server.metrics import ServerMetrics
from nanoforge.inference_server.types import GenerateInput, GenerationChunk, Usage

if TYPE_CHECKING:
    from nanoforge.inference_server.text import ServingModel

#: OpenAI's error ``type`` per HTTP status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
    503: "service_unavailable",
    504: "timeout",
}


class HttpError(Exception):
    """An HTTP-level failure (auth, body too large, bad JSON) with its status and OpenAI error fields."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def error_response(exc: BaseException) -> JSONResponse:
    """Any exception -> OpenAI-shaped JSON error with the right status (500 hides internal details)."""
    if isinstance(exc, HttpError):
        status, message, param, code = exc.status, str(exc), exc.param, exc.code
    elif isinstance(exc, InferenceError):
        status, message, param, code = exc.http_status, str(exc), getattr(exc, "field", None), None
    elif isinstance(exc, ValueError):
        status, message, param, code = 400, str(exc), None, None
    else:
        status, message, param, code = (
            500,
            "internal server error (details are in the server log)",
            None,
            None,
        )
    kind = _ERROR_TYPES.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code or kind}}
    return JSONResponse(body, status_code=status)


# --- the app -------------------------------------------------------------------------------------------


class OpenAIApp:
    """The route handlers; ``.app`` is the Starlette application."""

    def __init__(
        self,
        model: ServingModel,
        *,
        token: str | None = None,
        metrics: ServerMetrics | None = None,
        limits: Limits | None = None,
        max_body_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.model = model
        self.token = token.encode() if token else None
        self.metrics = metrics
        self.limits = limits or Limits()
        self.max_body_bytes = max_body_bytes
        self.draining = False
        self.created = int(time.time())
        routes = [
            Route("/health", self._wrap("health", self.health, auth=False), methods=["GET"]),
            Route("/metrics", self._wrap("metrics", self.metrics_text, auth=False), methods=["GET"]),
            Route("/v1/models", self._wrap("models", self.models), methods=["GET"]),
            Route("/v1/completions", self._wrap("completions", self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._wrap("chat", self.chat), methods=["POST"]),
            Route("/v1/embeddings", self._wrap("embeddings", self.embeddings), methods=["POST"]),
        ]
        self.app = Starlette(routes=routes)

    def _check_auth(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HttpError(
                401, "missing bearer token: send 'Authorization: Bearer <token>'", code="invalid_api_key"
            )
        if not hmac.compare_digest(given.strip().encode(), self.token):
            raise HttpError(401, "invalid bearer token", code="invalid_api_key")

    def _wrap(
        self, name: str, handler: Callable[[Request], Awaitable[Response]], *, auth: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                if auth:
                    self._check_auth(request)
                response = await handler(request)
            except Exception as exc:
                response = error_response(exc)
            if self.metrics is None or name == "metrics":
                return response
            status = str(response.status_code)
            if isinstance(response, StreamingResponse):  # count a stream when its last event is sent
                response.body_iterator = self._timed(response.body_iterator, name, status, t0)
            else:
                self.metrics.observe_request("http", name, status, time.perf_counter() - t0)
            return response

        return endpoint

    async def _timed(self, body: AsyncIterable[Any], name: str, status: str, t0: float) -> AsyncIterator[Any]:
        try:
            async for part in body:
                yield part
        finally:
            if self.metrics is not None:
                self.metrics.observe_request("http", name, status, time.perf_counter() - t0)

    async def _json(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise HttpError(
                413, f"request body of {declared} bytes is too large; accepted: <= {self.max_body_bytes}"
            )
        raw = await request.body()
        if len(raw) > self.max_body_bytes:
            raise HttpError(
                413, f"request body of {len(raw)} bytes is too large; accepted: <= {self.max_body_bytes}"
            )
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(400, f"request body must be a JSON object, got {type(body).__name__}")
        if self.draining:
            raise HttpError(503, "server is shutting down; retry on another replica")
        name = body.get("model")
        if name not in (None, "", self.model.name):
            raise NotFound(f"model {name!r} is not served; served models: [{self.model.name!r}]")
        return body

    # -- GET ---------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok", "model": self.model.name})

    async def metrics_text(self, request: Request) -> Response:
        if self.metrics is None:
            raise HttpError(404, "metrics are disabled on this server")
        data, content_type = self.metrics.render()
        return Response(data, media_type=content_type)

    async def models(self, request: Request) -> Response:
        entry = {"id": self.model.name, "object": "model", "created": self.created, "owned_by": "nanoforge"}
        return JSONResponse({"object": "list", "data": [entry]})

    # -- generation --------------------------------------------------------------------------------------

    def _observe(self, usage: Usage | None) -> None:
        if self.metrics is not None:
            self.metrics.observe_usage(usage)

    async def completions(self, request: Request) -> Response:
        body = await self._json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if body.get("echo") or body.get("suffix") or (body.get("best_of") or 1) != 1:
            raise oc.bad("echo/suffix/best_of", "set", "unset (not supported by this server)")
        if isinstance(prompt, str):
            if len(prompt) > self.limits.max_prompt_chars:
                raise oc.bad(
                    "prompt", f"<{len(prompt)} chars>", f"at most {self.limits.max_prompt_chars} characters"
                )
            source: dict[str, Any] = {"prompt": prompt}
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            source = {"prompt_ids": prompt}
        else:
            raise oc.bad(
                "prompt",
                prompt if not isinstance(prompt, list) else "<list>",
                "a string or one list of token ids",
            )
        stream = bool(body.get("stream"))
        inp = GenerateInput(
            **source,
            options=oc.sampling_options(body, chat=False, limits=self.limits),
            request_id=oc.new_request_id("cmpl"),
        )
        return await self._generate(
            inp.validate(), oc.sample_count(body, self.limits, stream), stream, chat=False, body=body
        )

    async def chat(self, request: Request) -> Response:
        body = await self._json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise oc.bad(
                "messages", "<not a non-empty list of objects>", "a non-empty list of {role, content} objects"
            )
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        if chars > self.limits.max_prompt_chars:
            raise oc.bad(
                "messages", f"<{chars} chars>", f"at most {self.limits.max_prompt_chars} characters in all"
            )
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise oc.bad("tools", tools, "a list of {type: function, function: {...}} objects")
        stream = bool(body.get("stream"))
        inp = GenerateInput(
            messages=[oc.text_content(m, i) for i, m in enumerate(messages)],
            options=oc.sampling_options(body, chat=True, limits=self.limits),
            response_format=oc.response_format(body),
            tools=tools or None,
            tool_choice=body.get("tool_choice"),
            request_id=oc.new_request_id("chatcmpl"),
        )
        return await self._generate(
            inp.validate(), oc.sample_count(body, self.limits, stream), stream, chat=True, body=body
        )

    async def _generate(
        self, inp: GenerateInput, n: int, stream: bool, *, chat: bool, body: dict[str, Any]
    ) -> Response:
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": inp.request_id, "object": kind, "created": int(time.time()), "model": self.model.name}
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            # Start the request now so that errors found before the first token become a proper HTTP error.
            agen = cast(AsyncGenerator[GenerationChunk, None], self.model.generate(inp))
            try:
                first = await agen.__anext__()
            except BaseException:
                await agen.aclose()
                raise
            return StreamingResponse(
                self._events(agen, first, head, chat=chat, include_usage=include_usage),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        results = await complete_all(self.model, sample_inputs(inp, n))
        usage = merge_usage([r.usage for r in results])
        self._observe(usage)
        choices = [oc.choice_json(r, i, chat) for i, r in enumerate(results)]
        return JSONResponse({**head, "choices": choices, "usage": oc.usage_json(usage)})

    async def _events(
        self,
        agen: AsyncIterator[GenerationChunk],
        first: GenerationChunk,
        head: dict[str, Any],
        *,
        chat: bool,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        """SSE stream; client disconnects cancel this generator, which closes the model stream (frees the slot)."""
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        async with contextlib.aclosing(agen):  # type: ignore[type-var]
            try:
                if chat:
                    yield oc.sse(
                        {
                            **head,
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None,
                                }
                            ],
                        }
                    )
                chunk: GenerationChunk | None = first
                while chunk is not None:
                    yield oc.sse({**head, "choices": [oc.delta_json(chunk, chat)]})
                    if chunk.finish_reason is not None:
                        self._observe(chunk.usage)
                        if include_usage:
                            yield oc.sse(
                                {**head, "choices": [], "usage": oc.usage_json(chunk.usage or Usage())}
                            )
                        break
                    chunk = await anext(agen, None)
            except Exception as exc:  # headers are sent: report the error in-band, as OpenAI does
                yield oc.sse(json.loads(bytes(error_response(exc).body)))
            yield b"data: [DONE]\n\n"

    async def embeddings(self, request: Request) -> Response:
        body = await self._json(request)
        raw = body.get("input")
        items: list[Any] = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        if not items or any(not oc.is_text_or_ids(x) for x in items):
            raise oc.bad(
                "input",
                "<bad>" if raw is not None else None,
                "a string, a list of strings, or token-id lists",
            )
        if len(items) > self.limits.max_batch_items:
            raise oc.bad("input", f"<{len(items)} items>", f"at most {self.limits.max_batch_items} items")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise oc.bad("encoding_format", fmt, "float or base64")
        if body.get("dimensions") is not None:
            raise oc.bad("dimensions", body["dimensions"], "unset (the model's hidden size is fixed)")
        ids = [self.model.tokenize(x) if isinstance(x, str) else list(x) for x in items]
        vectors = await self.model.embed(ids, normalize=True)
        data = [
            {"object": "embedding", "index": i, "embedding": oc.encode_vector(v, fmt)}
            for i, v in enumerate(vectors)
        ]
        usage = sum(map(len, ids))
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": self.model.name,
                "usage": {"prompt_tokens": usage, "total_tokens": usage},
            }
        )


class HttpServer:
    """uvicorn serving an ``OpenAIApp`` inside the caller's event loop (no signal handlers of its own)."""

    def __init__(
        self,
        app: OpenAIApp,
        *,
        host: str,
        port: int,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ):
        config = uvicorn.Config(
            app.app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            timeout_graceful_shutdown=None,
        )
        self.openai = app
        self.server = uvicorn.Server(config)
        # The CLI owns SIGTERM/SIGINT (it drains gRPC and HTTP together), so uvicorn must not capture them.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Start serving in a background task; returns the bound port (useful with port 0)."""
        self._task = asyncio.ensure_future(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises the startup error (e.g. address in use)
                raise OSError("HTTP server exited during startup")
            await asyncio.sleep(0.01)
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        """Refuse new work (health 503), let open requests finish for up to ``grace`` seconds, then exit."""
        self.openai.draining = True
        self.server.config.timeout_graceful_shutdown = math.ceil(grace)
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
