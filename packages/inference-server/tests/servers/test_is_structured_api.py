"""Structured output and forced tool calls through the real servers: the OFFICIAL ``openai`` client on the
HTTP API and the gRPC ``InferenceClient``, over the tiny random-weights model (sampling at temperature 1,
several seeds): every returned content must parse and validate; forced calls come back as ``tool_calls``.
"""

from __future__ import annotations

import json
import re

import grpc
import jsonschema
import openai
import pytest

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference_client import InferenceClient

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age"],
}
TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "add two ints",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
MSGS = [{"role": "user", "content": "Answer in JSON."}]


@pytest.fixture(scope="module")
def oai(plain_servers):
    client = openai.OpenAI(
        base_url=plain_servers.http_base + "/v1", api_key="unused", max_retries=0, timeout=60
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(plain_servers):
    with InferenceClient(plain_servers.grpc_target, timeout=60) as c:
        yield c


def test_openai_json_schema_content_validates(oai) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    for seed in range(5):
        reply = oai.chat.completions.create(
            model="tiny", messages=MSGS, response_format=fmt, max_tokens=200, temperature=1.0, seed=seed
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_openai_json_object_stream_and_length(oai) -> None:
    stream = oai.chat.completions.create(
        model="tiny",
        messages=MSGS,
        response_format={"type": "json_object"},
        max_tokens=300,
        temperature=1.0,
        seed=3,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    short = oai.chat.completions.create(
        model="tiny",
        messages=MSGS,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}},
        max_tokens=2,
        temperature=0,
    )
    assert short.choices[0].finish_reason == "length"  # incomplete: the content does not parse


def test_openai_forced_tool_calls(oai) -> None:
    for seed, choice in enumerate(["required", {"type": "function", "function": {"name": "add"}}] * 2):
        reply = oai.chat.completions.create(
            model="tiny",
            messages=MSGS,
            tools=[TOOL],
            tool_choice=choice,
            max_tokens=200,
            temperature=1,
            seed=seed,
        )
        c = reply.choices[0]
        assert c.finish_reason == "tool_calls", c
        (call,) = c.message.tool_calls
        assert call.type == "function" and call.function.name == "add" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), TOOL["function"]["parameters"])


def test_openai_bad_tool_choice_and_schema_are_400(oai, plain_servers) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown tool 'mul'"):
        oai.chat.completions.create(
            model="tiny",
            messages=MSGS,
            tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "mul"}},
            max_tokens=5,
        )
    with pytest.raises(openai.BadRequestError, match="maxItems 1 < minItems 2"):
        bad = {"type": "array", "minItems": 2, "maxItems": 1}
        oai.chat.completions.create(
            model="tiny",
            messages=MSGS,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
            max_tokens=5,
        )
    assert oai.models.list().data[0].id == "tiny"  # still up


def test_grpc_response_formats(grpc_client) -> None:
    for seed in range(3):
        out = grpc_client.generate(
            "JSON:", response_format={"json_schema": json.dumps(SCHEMA)}, max_new_tokens=200, seed=seed
        ).completions[0]
        assert out.finish_reason == common_pb2.FINISH_REASON_STOP
        jsonschema.validate(json.loads(out.text), SCHEMA)
        out = grpc_client.generate(
            "id:", response_format={"regex": r"[a-z]{2}-\d{2,4}"}, max_new_tokens=50, seed=seed
        )
        assert re.fullmatch(r"[a-z]{2}-\d{2,4}", out.completions[0].text)
        out = grpc_client.generate(
            "pick:", response_format={"choices": ["red", "blue"]}, max_new_tokens=50, seed=seed
        )
        assert out.completions[0].text in ("red", "blue")
    chunks = list(
        grpc_client.generate_stream(
            "JSON:", response_format={"json_schema": json.dumps(SCHEMA)}, max_new_tokens=200
        )
    )
    jsonschema.validate(json.loads("".join(c.text for c in chunks)), SCHEMA)


def test_grpc_invalid_schema_is_invalid_argument(grpc_client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        grpc_client.generate("x", response_format={"json_schema": '{"type": "integer", "minimum": "low"}'})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "minimum" in info.value.details() and "invalid JSON schema" in info.value.details()
    assert grpc_client.list_models().models[0].name == "tiny"
