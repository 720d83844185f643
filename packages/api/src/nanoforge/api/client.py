"""Tiny client helpers: channels to a nanoforge service with auth and size limits, and Usage as a dict.

What it does: builds ``grpc.aio`` and blocking channels with an optional bearer token (sent as
``authorization: Bearer <token>`` metadata on every call by a client interceptor), optional TLS, and raised
message-size limits; turns a ``Usage`` message into a plain dict for logs and reports.

What it deliberately does not do: retries, load balancing or service-specific wrappers. Use the generated
stubs on the channel directly::

    from nanoforge.api.client import make_channel
    from nanoforge.api.inference.v1 import inference_pb2, inference_pb2_grpc

    async with make_channel("127.0.0.1:50051", token="s3cret") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply = await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5.0)

Without TLS the token travels in clear text: fine on loopback, use ``tls=True`` across machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message

#: Default limit on one message in either direction (gRPC's own default receive limit is 4 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Metadata key that carries the bearer token (lower case, as gRPC requires).
AUTHORIZATION_KEY = "authorization"

#: A channel option as grpc takes it, for example ("grpc.keepalive_time_ms", 30000).
ChannelOption = tuple[str, Any]


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata pair that carries ``token``: ``(("authorization", "Bearer <token>"),)``.

    Raises:
        ValueError: if the token is empty or contains whitespace or control characters.
    """
    if not isinstance(token, str) or not token or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError(
            f"bad bearer token {token!r}: expected a non-empty string of printable characters without spaces"
        )
    return ((AUTHORIZATION_KEY, f"Bearer {token}"),)


def _channel_options(max_message_bytes: int, options: Sequence[ChannelOption]) -> list[ChannelOption]:
    if (
        isinstance(max_message_bytes, bool)
        or not isinstance(max_message_bytes, int)
        or max_message_bytes <= 0
    ):
        raise ValueError(f"max_message_bytes must be a positive int, got {max_message_bytes!r}")
    base: list[ChannelOption] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    return base + list(options)  # later options win, so callers can override the size limits too


def _credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    if root_certificates is not None and not tls:
        raise ValueError("root_certificates given but tls=False; pass tls=True to use them")
    return grpc.ssl_channel_credentials(root_certificates=root_certificates) if tls else None


def _with_auth(metadata: Any, pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str | bytes], ...]:
    """Existing call metadata plus the auth pair, unless the call already sets its own authorization."""
    current: tuple[tuple[str, str | bytes], ...] = tuple((str(k), v) for k, v in (metadata or ()))
    if any(k.lower() == AUTHORIZATION_KEY for k, _ in current):
        return current
    return current + pairs


class _AsyncAuth:
    """Shared part of the ``grpc.aio`` auth interceptors: call details plus the bearer-token metadata."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._pairs = pairs

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*_with_auth(details.metadata, self._pairs))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under ONE call kind (an isinstance/elif chain), so each kind needs its
# own object: a single class implementing all four would only ever see unary-unary calls.
class _AsyncAuthUnaryUnary(_AsyncAuth, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AsyncAuthUnaryStream(_AsyncAuth, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AsyncAuthStreamUnary(_AsyncAuth, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _AsyncAuthStreamStream(_AsyncAuth, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def _async_auth_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    pairs = bearer_metadata(token)
    kinds = (_AsyncAuthUnaryUnary, _AsyncAuthUnaryStream, _AsyncAuthStreamUnary, _AsyncAuthStreamStream)
    return [kind(pairs) for kind in kinds]


class _SyncCallDetails(grpc.ClientCallDetails):
    """A copy of a blocking call's details with replaced metadata (grpc's ClientCallDetails is read-only)."""

    def __init__(
        self, details: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _SyncAuth(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer-token metadata to every call of a blocking channel."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._pairs = pairs

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _SyncCallDetails(details, _with_auth(details.metadata, self._pairs))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def _check_target(target: str) -> None:
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"bad target {target!r}: expected 'host:port', for example '127.0.0.1:50051'")


def make_channel(
    target: str,
    *,
    token: str | None = None,
    tls: bool = False,
    root_certificates: bytes | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[ChannelOption] = (),
) -> grpc.aio.Channel:
    """Open a ``grpc.aio`` channel to a nanoforge service.

    Args:
        target: ``host:port`` (any gRPC target string, e.g. ``unix:/tmp/sock``).
        token: Bearer token sent as ``authorization: Bearer <token>`` on every call. None: no auth header.
        tls: True for a TLS channel, False for plaintext.
        root_certificates: PEM CA bundle to verify the server with TLS. None: the system roots.
        max_message_bytes: Limit on one sent or received message, in bytes.
        options: Extra grpc channel options; they override the size options above.

    Returns:
        The channel; use it as an async context manager or ``await channel.close()``.

    Raises:
        ValueError: on an empty target, a malformed token, a non-positive size, or certificates without TLS.
    """
    _check_target(target)
    opts = _channel_options(max_message_bytes, options)
    creds = _credentials(tls, root_certificates)
    interceptors = _async_auth_interceptors(token) if token is not None else None
    if creds is None:
        return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
    return grpc.aio.secure_channel(target, creds, options=opts, interceptors=interceptors)


def make_sync_channel(
    target: str,
    *,
    token: str | None = None,
    tls: bool = False,
    root_certificates: bytes | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[ChannelOption] = (),
) -> grpc.Channel:
    """Blocking twin of :func:`make_channel` (same arguments and errors); close it with ``.close()``."""
    _check_target(target)
    opts = _channel_options(max_message_bytes, options)
    creds = _credentials(tls, root_certificates)
    if creds is None:
        channel = grpc.insecure_channel(target, options=opts)
    else:
        channel = grpc.secure_channel(target, creds, options=opts)
    if token is not None:
        channel = grpc.intercept_channel(channel, _SyncAuth(bearer_metadata(token)))
    return channel


def usage_to_dict(usage: Message) -> dict[str, int | float]:
    """Every field of a ``nanoforge.api.common.v1.Usage``, zeros included, in declaration order.

    ``Usage(prompt_tokens=12, total_time_ms=3.5)`` -> ``{"prompt_tokens": 12, "completion_tokens": 0, ...,
    "total_time_ms": 3.5}``

    Raises:
        ValueError: if ``usage`` is not a Usage message.
    """
    name = getattr(getattr(usage, "DESCRIPTOR", None), "full_name", None)
    if name != "nanoforge.api.common.v1.Usage":
        raise ValueError(f"usage_to_dict expects a nanoforge.api.common.v1.Usage, got {type(usage).__name__}")
    return {field.name: getattr(usage, field.name) for field in usage.DESCRIPTOR.fields}
