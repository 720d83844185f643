"""The HTTP server at the byte level: SSE framing, error JSON shape and status codes, health, size limits.

(The official ``openai`` client is exercised in test_is_openai.py; here raw ``urllib`` shows exactly what
goes over the wire.)
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from nanoforge.inference_server import openai_convert
from nanoforge.inference_server.types import GenerationChunk, TokenLogprob, Usage


def _post(
    base: str, path: str, body: Any, *, raw: bytes | None = None, headers: dict[str, str] | None = None
):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers={"content-type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_health(plain_servers):
    with urllib.request.urlopen(plain_servers.http_base + "/health", timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok", "model": "tiny"}


def test_sse_framing_and_done(plain_servers):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    status, headers, raw = _post(plain_servers.http_base, "/v1/chat/completions", {**body, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    assert len({p["id"] for p in payloads}) == 1
    assert payloads[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    status, _, whole = _post(plain_servers.http_base, "/v1/chat/completions", body)
    streamed = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads)
    assert json.loads(whole)["choices"][0]["message"]["content"] == streamed


def test_completion_stream_and_token_id_prompt(plain_servers):
    ids = plain_servers.model.tokenize("The quick brown")
    status, _, raw = _post(
        plain_servers.http_base,
        "/v1/completions",
        {"model": "tiny", "prompt": ids, "max_tokens": 5, "temperature": 0},
    )
    by_ids = json.loads(raw)
    assert status == 200 and by_ids["usage"]["prompt_tokens"] == len(ids)
    assert by_ids["usage"]["timing_ms"]["total"] > 0
    status, _, raw = _post(
        plain_servers.http_base,
        "/v1/completions",
        {"model": "tiny", "prompt": "The quick brown", "max_tokens": 5, "temperature": 0, "stream": True},
    )
    events = [e for e in raw.decode().split("\n\n") if e and e != "data: [DONE]"]
    text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events)
    assert text == by_ids["choices"][0]["text"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, None),
        ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ("/v1/completions", {"prompt": 42}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x", "model": "nope"}, 404, None),
        ("/v1/completions", {"prompt": list(range(1, 300)) * 2, "max_tokens": 2}, 400, None),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, None),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "n": 2, "stream": True},
            400,
            "n",
        ),
        ("/v1/embeddings", {"input": []}, 400, "input"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ],
)
def test_errors_use_openai_shape(plain_servers, path, body, status, param):
    got, _, raw = _post(plain_servers.http_base, path, {"model": "tiny", **body})
    error = json.loads(raw)["error"]
    assert got == status, error
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param


def test_bad_json_oversize_body_and_auth_free_server(plain_servers):
    status, _, raw = _post(plain_servers.http_base, "/v1/completions", None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(raw)["error"]["message"]
    # Announce a 9 MiB body and send none of it: the server answers 413 from the header alone.
    conn = http.client.HTTPConnection("127.0.0.1", plain_servers.servers.http_port, timeout=10)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("content-type", "application/json")
    conn.putheader("content-length", str(9 * 1024 * 1024))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "too large" in json.loads(response.read())["error"]["message"]
    conn.close()
    with urllib.request.urlopen(plain_servers.http_base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'nanoforge_requests_total{api="http",method="completions",status="413"}' in text


def test_choice_and_delta_shapes_with_tool_calls_and_logprobs():
    """The JSON shapes for results a random model cannot produce (tool calls), from the converters."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    lp = TokenLogprob(token_id=5, text="hi", logprob=-0.5, top=[(5, "hi", -0.5), (6, "yo", -1.5)])
    done = GenerationChunk(
        text="", token_ids=[5], logprobs=[lp], finish_reason="tool_calls", tool_calls=[call], usage=Usage()
    )
    choice = openai_convert.choice_json(done, 0, chat=True)
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["tool_calls"] == [call]
    assert choice["logprobs"]["content"][0]["top_logprobs"][1] == {
        "token": "yo",
        "logprob": -1.5,
        "bytes": [121, 111],
    }
    delta = openai_convert.delta_json(done, chat=True)
    assert delta["delta"]["tool_calls"] == [{"index": 0, **call}]
    legacy = openai_convert.choice_json(done, 0, chat=False)
    assert legacy["logprobs"]["top_logprobs"] == [{"hi": -0.5, "yo": -1.5}]


def test_client_disconnect_mid_sse_frees_the_slot(slow_servers):
    body = {"model": "tiny", "prompt": "The lazy dog", "max_tokens": 2000, "temperature": 0, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", slow_servers.servers.http_port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    assert slow_servers.model.metrics()["inflight"] == 1  # admitted and not finished
    before = slow_servers.model.metrics()["total_tokens"]
    conn.close()  # hang up mid-stream
    metrics = slow_servers.wait_idle()
    assert metrics["running"] == metrics["queue_depth"] == metrics["inflight"] == 0
    assert metrics["total_tokens"] - before < 1500  # stopped long before its 2000 tokens
