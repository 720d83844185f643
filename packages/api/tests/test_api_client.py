"""Client helpers against a loopback server with trivial servicers (this tests the helpers, not a service).

The servicers echo the ``authorization`` metadata they received, so the tests see exactly what the
channel sent. Async tests run with ``asyncio.run`` (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import grpc.aio
import pytest

from nanoforge.api.client import (
    bearer_metadata,
    make_channel,
    make_sync_channel,
    usage_to_dict,
)
from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2, inference_pb2_grpc

NO_AUTH = "<none>"


def _auth(metadata) -> list[str]:
    return [v for k, v in metadata if k == "authorization"] or [NO_AUTH]


class AsyncEcho(inference_pb2_grpc.InferenceServiceServicer):
    """ListModels returns one model named after the received auth header; GenerateStream streams it."""

    def __init__(self, big: int = 0) -> None:
        self.big = big

    async def ListModels(self, request, context):
        names = _auth(context.invocation_metadata())
        models = [inference_pb2.ModelInfo(name=n) for n in names]
        if self.big:
            models.append(inference_pb2.ModelInfo(name="x" * self.big))
        return inference_pb2.ListModelsResponse(models=models, usage=common_pb2.Usage(total_time_ms=1.0))

    async def GenerateStream(self, request, context):
        for name in _auth(context.invocation_metadata()):
            yield inference_pb2.GenerateStreamResponse(text=name, request_id=request.request_id)


class SyncEcho(inference_pb2_grpc.InferenceServiceServicer):
    """Blocking twin of AsyncEcho."""

    def ListModels(self, request, context):
        names = _auth(context.invocation_metadata())
        return inference_pb2.ListModelsResponse(models=[inference_pb2.ModelInfo(name=n) for n in names])

    def GenerateStream(self, request, context):
        for name in _auth(context.invocation_metadata()):
            yield inference_pb2.GenerateStreamResponse(text=name)


async def _with_server(servicer, body):
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    await server.start()
    try:
        return await body(f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=None)


def test_api_async_channel_sends_bearer_token_on_unary_and_stream_calls() -> None:
    async def body(target: str) -> tuple[list[str], list[str]]:
        async with make_channel(target, token="s3cret-Token_1") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            reply = await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
            chunks = [
                m.text
                async for m in stub.GenerateStream(
                    inference_pb2.GenerateStreamRequest(request_id="r"), timeout=10
                )
            ]
        return [m.name for m in reply.models], chunks

    names, chunks = asyncio.run(_with_server(AsyncEcho(), body))
    assert names == ["Bearer s3cret-Token_1"]
    assert chunks == ["Bearer s3cret-Token_1"]


def test_api_async_channel_without_token_sends_no_authorization() -> None:
    async def body(target: str) -> list[str]:
        async with make_channel(target) as channel:
            reply = await inference_pb2_grpc.InferenceServiceStub(channel).ListModels(
                inference_pb2.ListModelsRequest(), timeout=10
            )
        return [m.name for m in reply.models]

    assert asyncio.run(_with_server(AsyncEcho(), body)) == [NO_AUTH]


def test_api_explicit_call_authorization_is_not_duplicated() -> None:
    async def body(target: str) -> list[str]:
        async with make_channel(target, token="channel-token") as channel:
            reply = await inference_pb2_grpc.InferenceServiceStub(channel).ListModels(
                inference_pb2.ListModelsRequest(), metadata=bearer_metadata("call-token"), timeout=10
            )
        return [m.name for m in reply.models]

    assert asyncio.run(_with_server(AsyncEcho(), body)) == ["Bearer call-token"]


def test_api_max_message_bytes_limits_received_replies() -> None:
    async def body(target: str) -> tuple[grpc.StatusCode, int]:
        async with make_channel(target, max_message_bytes=1024) as small:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await inference_pb2_grpc.InferenceServiceStub(small).ListModels(
                    inference_pb2.ListModelsRequest(), timeout=10
                )
        async with make_channel(target) as default:
            reply = await inference_pb2_grpc.InferenceServiceStub(default).ListModels(
                inference_pb2.ListModelsRequest(), timeout=10
            )
        return err.value.code(), len(reply.models[-1].name)

    code, size = asyncio.run(_with_server(AsyncEcho(big=8 * 1024), body))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert size == 8 * 1024


def test_api_sync_channel_sends_bearer_token() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(SyncEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with make_sync_channel(f"127.0.0.1:{port}", token="abc.def") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            reply = stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
            chunks = [m.text for m in stub.GenerateStream(inference_pb2.GenerateStreamRequest(), timeout=10)]
        with make_sync_channel(f"127.0.0.1:{port}") as channel:
            anonymous = inference_pb2_grpc.InferenceServiceStub(channel).ListModels(
                inference_pb2.ListModelsRequest(), timeout=10
            )
    finally:
        server.stop(grace=None)
    assert [m.name for m in reply.models] == ["Bearer abc.def"]
    assert chunks == ["Bearer abc.def"]
    assert [m.name for m in anonymous.models] == [NO_AUTH]


@pytest.mark.parametrize("token", ["", "has space", "new\nline", "tab\t"])
def test_api_bad_token_is_rejected_with_its_value(token: str) -> None:
    with pytest.raises(ValueError, match="bad bearer token"):
        make_sync_channel("127.0.0.1:1", token=token)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": ""}, "bad target"),
        ({"target": "127.0.0.1:1", "max_message_bytes": 0}, "max_message_bytes must be a positive int"),
        ({"target": "127.0.0.1:1", "root_certificates": b"pem"}, "tls=False"),
    ],
)
def test_api_bad_channel_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_sync_channel(**kwargs)


def test_api_usage_to_dict_lists_every_field_in_order() -> None:
    usage = common_pb2.Usage(prompt_tokens=12, completion_tokens=4, total_time_ms=3.5)
    assert usage_to_dict(usage) == {
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "cached_prompt_tokens": 0,
        "queue_time_ms": 0.0,
        "prefill_time_ms": 0.0,
        "decode_time_ms": 0.0,
        "total_time_ms": 3.5,
    }
    with pytest.raises(ValueError, match=r"expects a nanoforge\.api\.common\.v1\.Usage, got SamplingParams"):
        usage_to_dict(common_pb2.SamplingParams())
