"""Hypothesis-driven fuzzing of GenerateRequest fields against the real gRPC server.

Whatever the fields hold, the server answers OK or a client-error status (INVALID_ARGUMENT, NOT_FOUND)
with a message — never INTERNAL/UNKNOWN — and it stays up and idle afterwards.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2
from nanoforge.api.inference_client import InferenceClient

CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

token_ids = st.lists(st.integers(min_value=0, max_value=400), max_size=12)  # the vocabulary has 320
any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)


def _set_prompt(request: inference_pb2.GenerateRequest, draw: st.DrawFn) -> None:
    kind = draw(st.sampled_from(["text", "ids", "messages", "none"]))
    if kind == "text":
        request.text = draw(st.text(max_size=40))
    elif kind == "ids":
        request.token_ids.ids[:] = draw(token_ids)
    elif kind == "messages":
        request.messages.SetInParent()
        for _ in range(draw(st.integers(0, 3))):
            request.messages.messages.add(role=draw(st.integers(0, 4)), content=draw(st.text(max_size=20)))
    else:
        request.ClearField(request.WhichOneof("prompt") or "text")


def _set_format(request: inference_pb2.GenerateRequest, draw: st.DrawFn) -> None:
    kind = draw(st.sampled_from(["schema", "bad_schema", "regex", "choices"]))
    if kind == "schema":
        request.response_format.json_schema = '{"type": "object"}'
    elif kind == "bad_schema":
        request.response_format.json_schema = "{oops"
    elif kind == "regex":
        request.response_format.regex = "[a-z]+"
    else:
        request.response_format.choices.values.extend(draw(st.lists(st.text(max_size=5), max_size=2)))


def _set(field: str, values: st.SearchStrategy) -> object:
    def mutate(request: inference_pb2.GenerateRequest, draw: st.DrawFn) -> None:
        target = request if field in ("n", "model", "adapter") else request.sampling
        value = draw(values)
        if isinstance(getattr(target, field), list) or hasattr(getattr(target, field), "extend"):
            getattr(target, field)[:] = value
        else:
            setattr(target, field, value)

    return mutate


#: One way each of breaking (or just varying) a field of an otherwise valid request.
MUTATIONS = {
    "prompt": _set_prompt,
    "response_format": _set_format,
    "temperature": _set("temperature", any_float),
    "top_p": _set("top_p", any_float),
    "min_p": _set("min_p", any_float),
    "repetition_penalty": _set("repetition_penalty", any_float),
    "presence_penalty": _set("presence_penalty", any_float),
    "top_k": _set("top_k", st.integers(0, 2**32 - 1)),
    "seed": _set("seed", st.integers(0, 2**64 - 1)),
    "max_new_tokens": _set("max_new_tokens", st.sampled_from([0, 1, 5, 9000, 2**32 - 1])),
    "stop": _set("stop", st.lists(st.text(max_size=4), max_size=3)),
    "stop_token_ids": _set("stop_token_ids", token_ids),
    "logprobs": _set("logprobs", st.booleans()),
    "top_logprobs": _set("top_logprobs", st.integers(0, 30)),
    "ignore_eos": _set("ignore_eos", st.booleans()),
    "n": _set("n", st.integers(0, 40)),
    "model": _set("model", st.sampled_from(["", "tiny", "other"])),
    "adapter": _set("adapter", st.sampled_from(["", "missing"])),
}


@st.composite
def requests(draw: st.DrawFn) -> inference_pb2.GenerateRequest:
    """A valid greedy request (3 new tokens) with 0-3 fields replaced by arbitrary values."""
    request = inference_pb2.GenerateRequest(
        text=draw(st.text(min_size=1, max_size=30)),
        sampling=common_pb2.SamplingParams(temperature=0.0, max_new_tokens=3),
    )
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3, unique=True)):
        MUTATIONS[name](request, draw)
    return request


@pytest.fixture(scope="module")
def client(plain_servers):
    with InferenceClient(plain_servers.grpc_target, timeout=60) as c:
        yield c


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(request=requests())
def test_fuzzed_generate_requests_never_break_the_server(client, request):
    try:
        reply = client.stub.Generate(request, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())
        assert exc.details() and "\n" not in exc.details()
        event(exc.code().name)
    else:
        event("OK")
        assert len(reply.completions) == max(1, request.n)
        assert reply.usage.total_time_ms > 0


def test_server_is_idle_and_up_after_fuzzing(client, plain_servers):
    text = plain_servers.http_metrics()
    ok = plain_servers.counter(text, 'nanoforge_requests_total{api="grpc",method="Generate",status="OK"}')
    assert ok >= 2, "the fuzzer should reach successful generations too"
    assert client.list_models().models[0].name == "tiny"
    metrics = plain_servers.wait_idle()
    assert metrics["running"] == 0 and metrics["queue_depth"] == 0
