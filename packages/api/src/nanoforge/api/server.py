"""Service-agnostic plumbing for nanoforge's ``grpc.aio`` servers: auth, error mapping, health, TLS, shutdown.

Every nanoforge service (inference, retriever, recommender, trainer) builds its server the same way::

    from nanoforge.api import server as srv

    server = srv.create_server(
        [srv.BearerAuthInterceptor(token), srv.ErrorMappingInterceptor()], max_message_bytes=16 << 20
    )
    add_MyServiceServicer_to_server(MyServicer(...), server)
    health = srv.add_health_and_reflection(server, ["nanoforge.api.x.v1.MyService"])
    port = srv.bind(server, "127.0.0.1", 0, srv.server_credentials("cert.pem", "key.pem"))
    await server.start()
    ...
    await srv.graceful_stop(server, health, grace=30.0)

What it does: one interceptor that turns exceptions into status codes (with a one-line message and a
serialized ``ErrorDetail`` in the ``nanoforge-error-bin`` trailing metadata), one that checks a bearer token
(health checks stay open so that load balancers and orchestrators can probe without a secret), standard
health checking and server reflection, TLS credentials from PEM files, and a drain-then-stop shutdown.

What it deliberately does not do: service logic, metrics, rate limiting or mutual TLS. It imports only
grpc, protobuf, the standard library, grpcio-health-checking and grpcio-reflection.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from nanoforge.api.client import AUTHORIZATION_KEY, DEFAULT_MAX_MESSAGE_BYTES, ChannelOption
from nanoforge.api.common.v1 import common_pb2

_log = logging.getLogger("nanoforge.api.server")

#: Trailing-metadata key that carries a serialized ``nanoforge.api.common.v1.ErrorDetail``.
ERROR_DETAIL_KEY = "nanoforge-error-bin"

#: Full name of the standard health service (``grpc.health.v1.Health``).
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

#: Methods that need no bearer token: health probes come from orchestrators that hold no secret.
HEALTH_METHODS: frozenset[str] = frozenset(
    {f"/{HEALTH_SERVICE}/Check", f"/{HEALTH_SERVICE}/Watch", f"/{HEALTH_SERVICE}/List"}
)

#: Maps an exception to (status code, message), or None to fall back to the default mapping.
StatusOf = Callable[[BaseException], "tuple[grpc.StatusCode, str] | None"]

# Built-in exception kinds and their status codes; checked in order (the first isinstance match wins).
_DEFAULT_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (LookupError, grpc.StatusCode.NOT_FOUND),  # KeyError and IndexError are LookupErrors
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
)


def _one_line(exc: BaseException) -> str:
    # KeyError's str() is the repr of its key; use the argument itself when it is a string.
    text = (
        exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) else str(exc)
    )
    return " ".join(text.split()) or type(exc).__name__


def _code_from_attribute(value: Any) -> grpc.StatusCode | None:
    if isinstance(value, grpc.StatusCode):
        return value
    if isinstance(value, str) and value in grpc.StatusCode.__members__:
        return grpc.StatusCode[value]
    return None


def default_status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The standard exception -> (status code, message) mapping shared by every nanoforge service.

    An exception with a ``grpc_status`` attribute (a ``grpc.StatusCode`` or its name, like the inference
    server's ``InvalidRequest.grpc_status == "INVALID_ARGUMENT"``) gets that code. Otherwise ValueError ->
    INVALID_ARGUMENT, LookupError/KeyError -> NOT_FOUND, TimeoutError -> DEADLINE_EXCEEDED, PermissionError ->
    PERMISSION_DENIED, NotImplementedError -> UNIMPLEMENTED, with the exception's text as the message.
    Anything else is a bug: INTERNAL with a generic message (details stay in the server log).
    """
    code = _code_from_attribute(getattr(exc, "grpc_status", None))
    if code is not None:
        return code, _one_line(exc)
    for kind, kind_code in _DEFAULT_CODES:
        if isinstance(exc, kind):
            return kind_code, _one_line(exc)
    return grpc.StatusCode.INTERNAL, "internal server error (details are in the server log)"


def _reason(exc: BaseException) -> str:
    explicit = getattr(exc, "reason", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()  # InvalidRequest -> invalid_request


def error_detail(exc: BaseException, message: str) -> common_pb2.ErrorDetail:
    """The ``ErrorDetail`` for ``exc``: reason from ``exc.reason`` or its class name, field from ``exc.field``."""
    field = getattr(exc, "field", "")
    return common_pb2.ErrorDetail(
        reason=_reason(exc), message=message, field=field if isinstance(field, str) else ""
    )


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns any exception a handler raises into a status code with a clear one-line message.

    ``status_of`` is asked first; when it returns None (or is not given) :func:`default_status_of`
    decides. Aborts the handler made itself (``context.abort``) and cancellations pass through unchanged.
    INTERNAL errors are logged with their traceback; the client only sees a generic message.
    """

    def __init__(self, status_of: StatusOf | None = None, *, logger: logging.Logger | None = None) -> None:
        self._status_of = status_of
        self._log = logger or _log

    def _map(self, exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
        mapped = self._status_of(exc) if self._status_of is not None else None
        code, message = mapped if mapped is not None else default_status_of(exc)
        if code == grpc.StatusCode.INTERNAL:
            self._log.error("unhandled error in %s", method, exc_info=exc)
        else:
            self._log.info("%s -> %s: %s", method, code.name, message)
        return code, message

    async def _abort(self, exc: BaseException, method: str, context: grpc.aio.ServicerContext) -> None:
        code, message = self._map(exc, method)
        detail = error_detail(exc, message).SerializeToString()
        await context.abort(code, message, trailing_metadata=((ERROR_DETAIL_KEY, detail),))

    def _wrap_unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(exc, method, context)

        return wrapped

    def _wrap_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):  # a handler that writes with context.write()
                    await result
                    return
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    for item in result:
                        yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._abort(exc, method, context)

        return wrapped

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return rewrap_handler(
            handler,
            lambda behavior: self._wrap_unary(behavior, method),
            lambda behavior: self._wrap_stream(behavior, method),
        )


Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


def rewrap_handler(
    handler: grpc.RpcMethodHandler, wrap_unary: Wrapper, wrap_stream: Wrapper
) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` whose behaviour is wrapped: ``wrap_unary`` for unary responses, else ``wrap_stream``.

    The building block of server interceptors that need to see a call's outcome (errors, metrics).
    """
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **kw)
    return grpc.stream_stream_rpc_method_handler(wrap_stream(cast(Any, handler.stream_stream)), **kw)


def _token_of(metadata: Iterable[Any] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION_KEY:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _denied_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same call kind as ``handler`` that fails every call with UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    return rewrap_handler(handler, lambda _: deny, lambda _: deny_stream)


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` metadata on every call except ``exempt_methods``.

    A missing or wrong token fails the call with UNAUTHENTICATED before the handler runs. The comparison is
    constant-time. Health checks are exempt by default (probes hold no secret); reflection is not.
    """

    def __init__(self, token: str, *, exempt_methods: Iterable[str] = HEALTH_METHODS) -> None:
        if not isinstance(token, str) or not token.strip() or any(c.isspace() for c in token):
            raise ValueError("bearer token must be a non-empty string without whitespace")
        self._token = token.encode()
        self._exempt = frozenset(exempt_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._exempt:
            return handler
        token = _token_of(handler_call_details.invocation_metadata)
        if token is None:
            return _denied_handler(handler, "missing bearer token: send 'authorization: Bearer <token>'")
        if not hmac.compare_digest(token.encode(), self._token):
            return _denied_handler(handler, "invalid bearer token")
        return handler


def create_server(
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int | None = None,
    options: Sequence[ChannelOption] = (),
) -> grpc.aio.Server:
    """A ``grpc.aio`` server with the given interceptors (outermost first) and message-size limits.

    Args:
        interceptors: Server interceptors; put auth before error mapping so bad tokens fail fast.
        max_message_bytes: Largest message accepted or sent, in bytes (larger ones fail RESOURCE_EXHAUSTED).
        max_concurrent_rpcs: Calls served at once; more fail RESOURCE_EXHAUSTED. None: unlimited.
        options: Extra grpc server options, applied after (and overriding) the size limits.

    Raises:
        ValueError: on a non-positive size or concurrency limit.
    """
    if (
        isinstance(max_message_bytes, bool)
        or not isinstance(max_message_bytes, int)
        or max_message_bytes <= 0
    ):
        raise ValueError(f"max_message_bytes must be a positive int, got {max_message_bytes!r}")
    if max_concurrent_rpcs is not None and max_concurrent_rpcs <= 0:
        raise ValueError(f"max_concurrent_rpcs must be a positive int or None, got {max_concurrent_rpcs!r}")
    opts: list[ChannelOption] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # two servers must never share a port by accident
        *options,
    ]
    return grpc.aio.server(
        interceptors=list(interceptors), options=opts, maximum_concurrent_rpcs=max_concurrent_rpcs
    )


def server_credentials(cert_file: str | Path, key_file: str | Path) -> grpc.ServerCredentials:
    """TLS credentials from a PEM certificate (chain) file and its PEM private key file.

    Raises:
        OSError: if either file cannot be read.
        ValueError: if a file does not look like PEM.
    """
    pems = []
    for label, path in (("certificate", cert_file), ("private key", key_file)):
        data = Path(path).read_bytes()
        if b"-----BEGIN" not in data:
            raise ValueError(f"TLS {label} file {str(path)!r} is not PEM (no '-----BEGIN' line)")
        pems.append(data)
    cert, key = pems
    return grpc.ssl_server_credentials([(key, cert)])


def bind(
    server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Listen on ``host:port`` (TLS when ``credentials`` is given) and return the bound port (for port 0).

    Raises:
        ValueError: on a port outside 0..65535.
        OSError: when the address cannot be bound (in use, bad host).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535 (0: any free port), got {port!r}")
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        bound = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...")
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or invalid")
    return bound


def add_health_and_reflection(server: grpc.aio.Server, service_full_names: Sequence[str]) -> HealthServicer:
    """Register standard health checking (every service SERVING) and server reflection on ``server``.

    Args:
        server: The server, before ``start()``.
        service_full_names: Full names of the served services, e.g. ``"nanoforge.api.inference.v1.InferenceService"``.

    Returns:
        The health servicer; :func:`graceful_stop` flips it to NOT_SERVING while draining.
    """
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [*service_full_names, HEALTH_SERVICE, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return health


async def mark_serving(health: HealthServicer, service_full_names: Sequence[str]) -> None:
    """Set SERVING for the overall server ("") and each named service."""
    for name in ("", *service_full_names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)


async def graceful_stop(server: grpc.aio.Server, health: HealthServicer | None, grace: float) -> None:
    """Drain: report NOT_SERVING, refuse new calls, let in-flight calls finish for up to ``grace`` seconds.

    Calls still running after ``grace`` seconds are cancelled.
    """
    if grace < 0:
        raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
    if health is not None:
        await health.enter_graceful_shutdown()
    await server.stop(grace)


async def wait_for_stop_signal() -> None:
    """Return once the process gets SIGINT or SIGTERM (handlers installed on the running event loop).

    The servers' ``serve`` commands call this, then drain with their own grace period.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
