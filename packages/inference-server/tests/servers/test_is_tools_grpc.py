"""``tool_choice`` over real gRPC, and structured-output compilation kept off the server's event loop.

The tiny random-weights model (2048 positions: tool definitions take hundreds of tokens) samples at temperature 1 with several seeds: a named or required
``tool_choice`` must still come back as exactly one call whose arguments validate against the tool's schema
(the output is constrained); ``none`` must give plain text with the tools left out of the prompt.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import grpc
import jsonschema
import pytest

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference_client import InferenceClient
from nanoforge.inference_server.structured import Structurer

ADD = {
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
SHOUT = {
    "type": "function",
    "function": {
        "name": "shout",
        "description": "say a word loudly",
        "parameters": {
            "type": "object",
            "properties": {"word": {"type": "string", "maxLength": 6}, "times": {"enum": [1, 2]}},
            "required": ["word"],
        },
    },
}
TOOLS = [ADD, SHOUT]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MSGS = [{"role": "user", "content": "Use a tool."}]


@pytest.fixture(scope="module")
def client(long_servers):
    with InferenceClient(long_servers.grpc_target, timeout=120) as c:
        yield c


def _check_call(completion, allowed: set[str]) -> None:
    assert completion.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS, completion
    (call,) = completion.tool_calls
    assert call.name in allowed and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments_json), SCHEMAS[call.name])


def test_named_tool_choice_gives_a_valid_call_of_that_tool(client) -> None:
    for seed in range(3):
        for name in ("add", "shout"):
            choice = {"type": "function", "function": {"name": name}}
            reply = client.generate(
                MSGS, tools=TOOLS, tool_choice=choice, max_new_tokens=200, temperature=1.0, seed=seed
            )
            _check_call(reply.completions[0], {name})


def test_required_tool_choice_gives_a_valid_call_unary_and_streamed(client) -> None:
    names = set(SCHEMAS)
    for seed in range(4):
        reply = client.generate(
            MSGS, tools=TOOLS, tool_choice="required", max_new_tokens=200, temperature=1.0, seed=seed
        )
        _check_call(reply.completions[0], names)
    chunks = list(
        client.generate_stream(
            MSGS, tools=TOOLS, tool_choice="required", max_new_tokens=200, temperature=1.0, seed=7
        )
    )
    last = chunks[-1]
    assert last.usage.completion_tokens > 0
    _check_call(last, names)
    assert all(not c.tool_calls for c in chunks[:-1])


def test_none_tool_choice_gives_text_and_leaves_the_tools_out_of_the_prompt(client) -> None:
    for seed in range(3):
        none = client.generate(
            MSGS, tools=TOOLS, tool_choice="none", max_new_tokens=40, temperature=1.0, seed=seed
        )
        c = none.completions[0]
        assert not c.tool_calls and c.finish_reason != common_pb2.FINISH_REASON_TOOL_CALLS
    auto = client.generate(MSGS, tools=TOOLS, tool_choice="auto", max_new_tokens=1, temperature=0.0)
    unset = client.generate(MSGS, tools=TOOLS, max_new_tokens=1, temperature=0.0)
    bare = client.generate(MSGS, max_new_tokens=1, temperature=0.0)
    # auto (and unset) render the tool definitions into the prompt; none renders the bare conversation.
    assert auto.usage.prompt_tokens == unset.usage.prompt_tokens > none.usage.prompt_tokens
    assert none.usage.prompt_tokens == bare.usage.prompt_tokens


def test_bad_tool_choice_is_invalid_argument_and_server_stays_up(client) -> None:
    cases = [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "mul"}}}, "unknown tool"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "add"}}}, "tool_choice"),
    ]
    for kw, needle in cases:
        with pytest.raises(grpc.RpcError) as info:
            client.generate(MSGS, max_new_tokens=5, **kw)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kw
        assert needle in info.value.details()
    with pytest.raises(ValueError, match="bad tool_choice 'always'"):
        client.generate(MSGS, tools=TOOLS, tool_choice="always")
    assert client.list_models().models[0].name == "tiny"


def big_schema(fields: int, tag: str) -> dict:
    """An object of ``fields`` nested objects: its DFA takes about a second to compile on a laptop core."""
    inner = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "n": {"type": "integer", "minimum": -99999, "maximum": 99999},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 4},
            "kind": {"enum": ["alpha", "beta", "gamma", "delta"]},
        },
    }
    return {"type": "object", "title": tag, "properties": {f"f{i}": inner for i in range(fields)}}


def test_schema_compiles_off_the_event_loop(long_servers, client) -> None:
    sm = long_servers.model
    fresh = Structurer(sm.tokenizer, sm.model.config.vocab_size, sm.stop_ids)
    _ = fresh.index  # the server has its index already; time the schema alone
    t0 = time.perf_counter()
    fresh.response_guide({"type": "json_schema", "schema": big_schema(8, "warm-up")})
    compile_s = time.perf_counter() - t0
    assert compile_s > 0.2, f"schema compiled in {compile_s:.3f}s: too small to show a blocked loop"

    done = threading.Event()

    async def probe() -> float:
        """Largest extra delay of a 10 ms sleep on the server's loop while ``done`` is unset."""
        worst = 0.0
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - t - 0.01)
        return worst

    lag = asyncio.run_coroutine_threadsafe(probe(), long_servers.loop)
    try:
        time.sleep(0.1)
        fmt = {"json_schema": json.dumps(big_schema(8, uuid.uuid4().hex))}  # a title the cache has not seen
        t0 = time.perf_counter()
        out = client.generate("JSON:", response_format=fmt, max_new_tokens=2, temperature=0.0)
        request_s = time.perf_counter() - t0
    finally:
        done.set()
    worst = lag.result(30)
    assert out.completions[0].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert request_s > 0.5 * compile_s  # the request did pay for a compile (not served from a cache)
    # Compiled on the loop, the loop stalls for the whole compile; in a worker thread it keeps running.
    assert worst < 0.5 * compile_s, f"loop stalled {worst:.3f}s during a {compile_s:.3f}s compile"
