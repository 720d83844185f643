"""The shared server plumbing (nanoforge.api.server) on loopback with a tiny test servicer.

The servicer raises chosen exceptions so the tests see how the error interceptor maps them; auth, TLS,
health, reflection and graceful stop are exercised through real grpc.aio clients. Each test runs its own
server inside ``asyncio.run`` (no pytest plugin).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path
from typing import ClassVar

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from nanoforge.api import server as srv
from nanoforge.api.client import make_channel, make_sync_channel
from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2, inference_pb2_grpc

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class StatusCarrier(Exception):
    grpc_status = "RESOURCE_EXHAUSTED"
    reason = "queue_full"
    field = "sampling.top_p"


class Raiser(inference_pb2_grpc.InferenceServiceServicer):
    """Tokenize raises the exception named by its text; GenerateStream streams then raises; Detokenize sleeps."""

    ERRORS: ClassVar[dict[str, Exception]] = {
        "value": ValueError("top_p must be in (0, 1], got 2.0"),
        "key": KeyError("no model named 'x'"),
        "timeout": TimeoutError("took too long"),
        "carrier": StatusCarrier("queue is full (64 waiting)"),
        "bug": ZeroDivisionError("secret internal detail"),
    }

    async def Tokenize(self, request, context):
        if request.text in self.ERRORS:
            raise self.ERRORS[request.text]
        if request.text == "abort":
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "handler aborted itself")
        return inference_pb2.TokenizeResponse(token_ids=[len(request.text)])

    async def GenerateStream(self, request, context):
        for i in range(3):
            yield inference_pb2.GenerateStreamResponse(index=0, text=str(i))
        if request.text == "fail":
            raise ValueError("bad stream field")

    async def Detokenize(self, request, context):
        await asyncio.sleep(0.5)
        return inference_pb2.DetokenizeResponse(text="slow")


async def _start(interceptors, credentials=None):
    server = srv.create_server(interceptors, max_message_bytes=1 << 20)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(Raiser(), server)
    health = srv.add_health_and_reflection(server, [SERVICE])
    port = srv.bind(server, "127.0.0.1", 0, credentials)
    await server.start()
    await srv.mark_serving(health, [SERVICE])
    return server, health, port


def test_error_mapping_codes_messages_and_detail(caplog):
    async def scenario():
        server, _, port = await _start([srv.ErrorMappingInterceptor()])
        seen = {}
        async with make_channel(f"127.0.0.1:{port}") as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            for name in [*Raiser.ERRORS, "abort"]:
                call = stub.Tokenize(inference_pb2.TokenizeRequest(text=name), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                detail = dict(info.value.trailing_metadata() or ()).get(srv.ERROR_DETAIL_KEY)
                seen[name] = (info.value.code(), info.value.details(), detail)
            ok = await stub.Tokenize(inference_pb2.TokenizeRequest(text="fine"), timeout=5)
        await server.stop(0)
        return seen, ok

    with caplog.at_level(logging.INFO, logger="nanoforge.api.server"):
        seen, ok = asyncio.run(scenario())
    assert list(ok.token_ids) == [4]
    assert seen["value"][:2] == (grpc.StatusCode.INVALID_ARGUMENT, "top_p must be in (0, 1], got 2.0")
    assert seen["key"][:2] == (grpc.StatusCode.NOT_FOUND, "no model named 'x'")
    assert seen["timeout"][0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert seen["carrier"][:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full (64 waiting)")
    detail = common_pb2.ErrorDetail.FromString(seen["carrier"][2])
    assert (detail.reason, detail.field) == ("queue_full", "sampling.top_p")
    assert common_pb2.ErrorDetail.FromString(seen["value"][2]).reason == "value_error"
    code, message, _ = seen["bug"]
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message
    assert seen["abort"][:2] == (grpc.StatusCode.ALREADY_EXISTS, "handler aborted itself")
    assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records)


def test_custom_status_of_and_stream_errors():
    def status_of(exc):
        return (grpc.StatusCode.FAILED_PRECONDITION, "custom") if isinstance(exc, TimeoutError) else None

    async def scenario():
        server, _, port = await _start([srv.ErrorMappingInterceptor(status_of)])
        async with make_channel(f"127.0.0.1:{port}") as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as timeout:
                await stub.Tokenize(inference_pb2.TokenizeRequest(text="timeout"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as value:
                await stub.Tokenize(inference_pb2.TokenizeRequest(text="value"), timeout=5)
            texts = []
            with pytest.raises(grpc.aio.AioRpcError) as stream:
                async for chunk in stub.GenerateStream(inference_pb2.GenerateStreamRequest(text="fail")):
                    texts.append(chunk.text)
        await server.stop(0)
        return timeout.value, value.value, stream.value, texts

    timeout, value, stream, texts = asyncio.run(scenario())
    assert (timeout.code(), timeout.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "custom")
    assert value.code() == grpc.StatusCode.INVALID_ARGUMENT  # falls back to the default mapping
    assert texts == ["0", "1", "2"]
    assert (stream.code(), stream.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "bad stream field")


def test_bearer_auth_exempts_health_only():
    async def scenario():
        server, _, port = await _start([srv.BearerAuthInterceptor("s3cret"), srv.ErrorMappingInterceptor()])
        target = f"127.0.0.1:{port}"
        codes = {}
        for label, token in (("none", None), ("wrong", "nope"), ("right", "s3cret")):
            async with make_channel(target, token=token) as ch:
                stub = inference_pb2_grpc.InferenceServiceStub(ch)
                try:
                    await stub.Tokenize(inference_pb2.TokenizeRequest(text="abc"), timeout=5)
                    codes[label] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    codes[label] = exc.code()
                try:
                    async for _ in stub.GenerateStream(inference_pb2.GenerateStreamRequest(text="x")):
                        pass
                    codes[label + "-stream"] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    codes[label + "-stream"] = exc.code()
        async with make_channel(target) as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=SERVICE)
            )
        await server.stop(0)
        return codes, health.status

    codes, health_status = asyncio.run(scenario())
    assert codes == {
        "none": grpc.StatusCode.UNAUTHENTICATED,
        "none-stream": grpc.StatusCode.UNAUTHENTICATED,
        "wrong": grpc.StatusCode.UNAUTHENTICATED,
        "wrong-stream": grpc.StatusCode.UNAUTHENTICATED,
        "right": grpc.StatusCode.OK,
        "right-stream": grpc.StatusCode.OK,
    }
    assert health_status == health_pb2.HealthCheckResponse.SERVING


def _reflected_services(target: str) -> list[str]:
    channel = make_sync_channel(target)
    try:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())
    finally:
        channel.close()


def test_reflection_lists_services_and_graceful_stop_drains():
    async def scenario():
        server, health, port = await _start([srv.ErrorMappingInterceptor()])
        target = f"127.0.0.1:{port}"
        names = await asyncio.to_thread(_reflected_services, target)  # blocking client off the loop
        async with make_channel(target) as ch:
            slow = asyncio.ensure_future(
                inference_pb2_grpc.InferenceServiceStub(ch).Detokenize(inference_pb2.DetokenizeRequest())
            )
            await asyncio.sleep(0.1)
            stopping = asyncio.ensure_future(srv.graceful_stop(server, health, grace=5.0))
            await asyncio.sleep(0.05)
            reply = await slow  # the in-flight call finishes during the drain
            await stopping
        status = (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), None)).status
        return names, reply.text, status

    names, text, status = asyncio.run(scenario())
    assert {SERVICE, srv.HEALTH_SERVICE, "grpc.reflection.v1alpha.ServerReflection"} <= set(names)
    assert text == "slow"
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_tls_round_trip_and_plaintext_refused(tmp_path):
    cert_file, key_file = _self_signed(tmp_path)

    async def scenario():
        server, _, port = await _start([], srv.server_credentials(cert_file, key_file))
        override = (("grpc.ssl_target_name_override", "localhost"),)
        async with make_channel(
            f"127.0.0.1:{port}", tls=True, root_certificates=cert_file.read_bytes(), options=override
        ) as ch:
            ok = await inference_pb2_grpc.InferenceServiceStub(ch).Tokenize(
                inference_pb2.TokenizeRequest(text="tls!"), timeout=5
            )
        async with make_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as plain:
                await inference_pb2_grpc.InferenceServiceStub(ch).Tokenize(
                    inference_pb2.TokenizeRequest(text="x"), timeout=2
                )
        await server.stop(0)
        return ok, plain.value.code()

    ok, plain_code = asyncio.run(scenario())
    assert list(ok.token_ids) == [4]
    assert plain_code == grpc.StatusCode.UNAVAILABLE


def test_bad_inputs_fail_with_clear_errors(tmp_path):
    (tmp_path / "cert.pem").write_text("not a pem")
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----")
    with pytest.raises(ValueError, match=r"certificate file .* is not PEM"):
        srv.server_credentials(tmp_path / "cert.pem", tmp_path / "key.pem")
    with pytest.raises(OSError):
        srv.server_credentials(tmp_path / "missing.pem", tmp_path / "key.pem")
    with pytest.raises(ValueError, match="non-empty string"):
        srv.BearerAuthInterceptor("has space")
    with pytest.raises(ValueError, match="max_message_bytes"):
        srv.create_server(max_message_bytes=0)

    async def bad_port():
        server = srv.create_server()
        try:
            srv.bind(server, "127.0.0.1", 70000)
        finally:
            await server.stop(0)

    with pytest.raises(ValueError, match=r"0\.\.65535"):
        asyncio.run(bad_port())
    assert srv.default_status_of(KeyError("k"))[0] == grpc.StatusCode.NOT_FOUND
    assert srv.default_status_of(RuntimeError("x"))[0] == grpc.StatusCode.INTERNAL
