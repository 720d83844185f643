"""The errors the inference engine raises, each meaning one gRPC status / HTTP code.

The engine and the text layer raise these; the gRPC interceptor and the HTTP app map them with one table
(``STATUS_OF``), so a servicer never decides a status code itself. Messages say what was wrong, with the
value, and what is accepted.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class of every error the engine reports to a client."""

    #: gRPC status name (``grpc.StatusCode[...]``) and HTTP status for this error kind.
    grpc_status = "INTERNAL"
    http_status = 500


class InvalidRequest(InferenceError, ValueError):
    """The request is malformed: a bad sampling value, a too-long prompt, an invalid JSON schema..."""

    grpc_status = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(InferenceError, LookupError):
    """An unknown model or adapter name."""

    grpc_status = "NOT_FOUND"
    http_status = 404


class QueueFull(InferenceError):
    """The bounded request queue is full; the client should retry later."""

    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 429


class DeadlineExceeded(InferenceError):
    """The request's deadline passed before it finished; its memory has been freed."""

    grpc_status = "DEADLINE_EXCEEDED"
    http_status = 504


class Cancelled(InferenceError):
    """The client cancelled the request; its memory has been freed."""

    grpc_status = "CANCELLED"
    http_status = 499


class Unavailable(InferenceError):
    """The server is shutting down (draining) and takes no new requests."""

    grpc_status = "UNAVAILABLE"
    http_status = 503
