"""The OpenAI-compatible HTTP API driven by the OFFICIAL ``openai`` Python client, end to end.

The server is the real one (uvicorn on 127.0.0.1, port 0) over a tiny random model; greedy decoding
makes the streamed and non-streamed answers comparable token for token.
"""

from __future__ import annotations

import math

import openai
import pytest


@pytest.fixture(scope="module")
def oai(plain_servers):
    client = openai.OpenAI(
        base_url=plain_servers.http_base + "/v1", api_key="unused", max_retries=0, timeout=60
    )
    yield client
    client.close()


def test_models_list(oai):
    models = oai.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].owned_by == "nanoforge"


def test_chat_completion_and_stream_agree(oai, plain_servers):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    reply = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("length", "stop")
    assert reply.usage.prompt_tokens > 4 and reply.usage.completion_tokens >= 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    stream = oai.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [choice.finish_reason]
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    )
    assert plain_servers.wait_idle()["running"] == 0


def test_completions_with_logprobs(oai, plain_servers):
    reply = oai.completions.create(
        model="tiny", prompt="The quick brown", max_tokens=8, temperature=0, logprobs=2
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert len(choice.logprobs.token_logprobs) == len(choice.logprobs.tokens) >= 1
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    # top_logprobs maps token text -> logprob, so two byte-fragment tokens that both render as U+FFFD share a key.
    assert all(1 <= len(top) <= 2 for top in choice.logprobs.top_logprobs)
    assert len(choice.logprobs.tokens) == reply.usage.completion_tokens
    assert reply.usage.prompt_tokens == len(plain_servers.model.tokenize("The quick brown"))


def test_n_choices(oai):
    reply = oai.completions.create(model="tiny", prompt="A tiny", max_tokens=4, n=3, seed=1, temperature=1.0)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens >= 3


def test_embeddings_float_and_default_base64(oai):
    # The client asks for base64 by default and decodes it; float is asked for explicitly.
    default = oai.embeddings.create(model="tiny", input=["hello world", "a fox"])
    floats = oai.embeddings.create(model="tiny", input="hello world", encoding_format="float")
    assert len(default.data) == 2 and len(default.data[0].embedding) == 32
    assert math.isclose(sum(v * v for v in default.data[0].embedding), 1.0, rel_tol=1e-4)
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert default.usage.prompt_tokens > 0


def test_error_cases(oai, plain_servers):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], top_p=1.5)
    assert bad.value.status_code == 400
    assert "top_p" in bad.value.message and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as negative:
        oai.completions.create(model="tiny", prompt="x", max_tokens=-1)
    assert negative.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "gpt-4o" in missing.value.message
    with pytest.raises(openai.BadRequestError, match="unknown type 'objet'"):  # invalid schema -> 400
        oai.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "x"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "objet"}},
            },
        )
    assert oai.models.list().data[0].id == "tiny"  # still up


def test_tools_are_accepted(oai):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    reply = oai.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "weather?"}],
        tools=tools,
        max_tokens=6,
        temperature=0,
    )
    plain = oai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "weather?"}], max_tokens=6, temperature=0
    )
    # The tools block is rendered into the prompt, so the prompt is longer than without tools.
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens
    assert reply.choices[0].finish_reason in ("length", "stop", "tool_calls")
