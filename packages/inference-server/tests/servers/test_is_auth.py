"""Bearer-token auth and TLS on both servers (one process, a self-signed certificate made in the test)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nanoforge.api.client import make_sync_channel
from nanoforge.api.inference_client import InferenceClient
from nanoforge.inference_server.cli import ServeOptions

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def secure(tiny_model_dir, tmp_path_factory, start_servers_fn, self_signed_fn):
    cert, key = self_signed_fn(tmp_path_factory.mktemp("tls"))
    options = ServeOptions(port=0, http_port=0, token=TOKEN, tls_cert=str(cert), tls_key=str(key))
    running = start_servers_fn(tiny_model_dir, options, max_batch_size=2)
    running.cert = cert.read_bytes()
    yield running
    running.close()


def _client(secure, token):
    return InferenceClient(
        secure.grpc_target, token=token, tls=True, root_certificates=secure.cert, timeout=30
    )


def test_grpc_token_required_except_health(secure):
    for token in (None, "wrong-token"):
        with _client(secure, token) as client, pytest.raises(grpc.RpcError) as info:
            client.list_models()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with _client(secure, TOKEN) as client:
        assert client.list_models().models[0].name == "tiny"
        assert len(client.generate("hello", max_new_tokens=3, temperature=0).completions[0].token_ids) >= 1
    channel = make_sync_channel(secure.grpc_target, tls=True, root_certificates=secure.cert)
    try:  # health probes need no token
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        channel.close()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_plaintext_to_tls_port_fails(secure):
    with (
        InferenceClient(secure.grpc_target, token=TOKEN, timeout=5) as client,
        pytest.raises(grpc.RpcError) as info,
    ):
        client.list_models()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def _get(secure, path, token=None):
    context = ssl.create_default_context(cadata=secure.cert.decode())
    headers = {"authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(secure.http_base + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_https_token_required_except_health(secure):
    assert _get(secure, "/health")[0] == 200
    status, body = _get(secure, "/v1/models")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert _get(secure, "/v1/models", "wrong")[0] == 401
    status, body = _get(secure, "/v1/models", TOKEN)
    assert status == 200 and body["data"][0]["id"] == "tiny"


def test_openai_client_auth_over_tls(secure):
    http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cadata=secure.cert.decode()))
    base = secure.http_base + "/v1"
    try:
        bad = openai.OpenAI(base_url=base, api_key="wrong", http_client=http, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=base, api_key=TOKEN, http_client=http, max_retries=0)
        reply = good.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
        )
        assert reply.usage.completion_tokens >= 1
    finally:
        http.close()
