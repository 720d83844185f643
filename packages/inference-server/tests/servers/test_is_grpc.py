"""The gRPC InferenceService end to end: a real server on 127.0.0.1 over a tiny random model.

Greedy decoding (temperature 0) makes outputs deterministic, so streamed, unary and concurrent runs of
the same prompt must produce the same tokens.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from nanoforge.api.client import make_sync_channel
from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2
from nanoforge.api.inference_client import AsyncInferenceClient, InferenceClient

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def client(plain_servers):
    with InferenceClient(plain_servers.grpc_target, timeout=60) as c:
        yield c


def test_unary_generate_usage_and_text(client, plain_servers):
    reply = client.generate("The quick brown", max_new_tokens=12, request_id="req-1", **GREEDY)
    (done,) = reply.completions
    assert reply.model == "tiny" and reply.request_id == "req-1"
    assert 1 <= len(done.token_ids) <= 12
    assert done.finish_reason in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_STOP)
    prompt_ids = plain_servers.model.tokenize("The quick brown")
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens >= len(done.token_ids)
    assert reply.usage.total_time_ms >= reply.usage.prefill_time_ms > 0
    assert done.text == plain_servers.model.detokenize(list(done.token_ids))


def test_stream_matches_unary_and_usage_only_on_last(client):
    unary = client.generate("Once upon a time", max_new_tokens=16, **GREEDY).completions[0]
    chunks = list(client.generate_stream("Once upon a time", max_new_tokens=16, **GREEDY))
    assert [c.HasField("usage") for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(c.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert chunks[-1].finish_reason == unary.finish_reason
    assert [t for c in chunks for t in c.token_ids] == list(unary.token_ids)
    assert "".join(c.text for c in chunks) == unary.text
    assert chunks[-1].usage.completion_tokens >= len(unary.token_ids) > 0


def test_n_samples_and_token_id_and_chat_prompts(client):
    reply = client.generate("A tiny model", max_new_tokens=6, n=3, seed=7, temperature=1.0)
    assert [c.index for c in reply.completions] == [0, 1, 2]
    assert reply.usage.completion_tokens >= sum(len(c.token_ids) for c in reply.completions)
    ids = client.tokenize("A tiny model").token_ids
    by_ids = client.generate(list(ids), max_new_tokens=6, **GREEDY).completions[0]
    by_text = client.generate("A tiny model", max_new_tokens=6, **GREEDY).completions[0]
    assert list(by_ids.token_ids) == list(by_text.token_ids)
    chat = client.generate([{"role": "user", "content": "hello"}], max_new_tokens=5, **GREEDY)
    assert chat.usage.prompt_tokens > 3  # the chat template adds its markers around "hello"


def test_concurrent_streams_match_solo_runs(plain_servers):
    prompts = [f"request number {i} says" for i in range(8)]

    async def one(client, prompt):
        return [
            t async for c in client.generate_stream(prompt, max_new_tokens=10, **GREEDY) for t in c.token_ids
        ]

    async def scenario():
        async with AsyncInferenceClient(plain_servers.grpc_target, timeout=60) as client:
            solo = [await one(client, p) for p in prompts]
            together = await asyncio.gather(*(one(client, p) for p in prompts))
        return solo, together

    solo, together = asyncio.run(scenario())
    assert together == solo
    assert all(len(tokens) > 0 for tokens in solo)


def test_cancel_mid_stream_frees_the_slot(slow_servers):
    with InferenceClient(slow_servers.grpc_target, timeout=60) as client:
        stream = client.generate_stream("The lazy dog", max_new_tokens=2000, **GREEDY)
        got = [next(stream), next(stream)]
        assert slow_servers.model.metrics()["inflight"] == 1  # admitted and not finished
        before = slow_servers.model.metrics()["total_tokens"]
        stream.close()  # cancels the call; the server closes the model stream
        metrics = slow_servers.wait_idle()
    assert metrics["running"] == metrics["queue_depth"] == metrics["inflight"] == 0
    assert metrics["total_tokens"] - before < 1500  # stopped long before its 2000 tokens
    assert all(len(c.token_ids) >= 1 for c in got)


def test_deadline_is_honoured(slow_servers):
    before = slow_servers.model.metrics()["total_tokens"]
    with InferenceClient(slow_servers.grpc_target) as client, pytest.raises(grpc.RpcError) as info:
        client.generate("def add(a, b):", max_new_tokens=2000, timeout=0.3, **GREEDY)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    metrics = slow_servers.wait_idle()
    assert metrics["running"] == 0 and metrics["total_tokens"] - before < 1500


def test_score_embed_tokenize_detokenize_list_models(client, plain_servers):
    scores = client.score("The quick brown", [" fox", " dog jumps"], token_logprobs=True)
    assert [s.num_tokens for s in scores.scores] == [
        len(plain_servers.model.tokenize(t)) for t in (" fox", " dog jumps")
    ]
    assert all(s.logprob <= 0 and len(s.token_logprobs) == s.num_tokens for s in scores.scores)
    assert scores.usage.prompt_tokens > 0 and scores.usage.total_time_ms > 0
    emb = client.embed(["hello world", "a fox"], normalize=True)
    assert emb.dimension == 32 and all(len(e.values) == 32 for e in emb.embeddings)
    assert abs(sum(v * v for v in emb.embeddings[0].values) - 1.0) < 1e-4
    assert emb.usage.prompt_tokens == sum(e.num_tokens for e in emb.embeddings)
    tok = client.tokenize("hello world", return_pieces=True)
    assert "".join(tok.pieces) == "hello world" and tok.usage.prompt_tokens == len(tok.token_ids)
    assert client.detokenize(list(tok.token_ids)).text == "hello world"
    special = client.tokenize("<|im_end|>", allow_special=True).token_ids
    assert len(special) == 1 and len(client.tokenize("<|im_end|>").token_ids) > 1
    (info,) = client.list_models().models
    assert (info.name, info.vocab_size, info.embedding_dimension, info.context_length) == (
        "tiny",
        320,
        32,
        512,
    )
    assert info.is_default and info.num_parameters > 0


@pytest.mark.parametrize(
    ("kwargs", "code", "needle"),
    [
        ({"top_p": 2.0}, grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        ({"temperature": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ({"max_new_tokens": 100_000}, grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens"),
        ({"adapter": "nope"}, grpc.StatusCode.NOT_FOUND, "nope"),
        ({"model": "other"}, grpc.StatusCode.NOT_FOUND, "other"),
        ({"n": 99}, grpc.StatusCode.INVALID_ARGUMENT, "n=99"),
        ({"response_format": {"json_schema": "{not json"}}, grpc.StatusCode.INVALID_ARGUMENT, "json_schema"),
        ({"top_logprobs": 3}, grpc.StatusCode.INVALID_ARGUMENT, "top_logprobs"),
    ],
)
def test_bad_requests_get_the_right_status(client, kwargs, code, needle):
    with pytest.raises(grpc.RpcError) as info:
        client.generate("hello", max_new_tokens=kwargs.pop("max_new_tokens", 4), **kwargs)
    assert info.value.code() == code
    assert needle in info.value.details()
    detail = common_pb2.ErrorDetail.FromString(dict(info.value.trailing_metadata())["nanoforge-error-bin"])
    assert detail.message == info.value.details() and detail.reason
    if "top_p" in kwargs:
        assert detail.field == "sampling.top_p"
    assert client.list_models().models[0].name == "tiny"  # still up


def test_oversize_prompt_and_bad_ids(client):
    with pytest.raises(grpc.RpcError) as too_long:
        client.generate(list(range(1, 300)) * 2, max_new_tokens=4)  # context is 512 tokens
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as bad_id:
        client.detokenize([5, 10_000])
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "10000" in bad_id.value.details()
    with pytest.raises(grpc.RpcError) as in_stream:
        list(client.generate_stream("x", top_p=2.0))
    assert in_stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_p" in in_stream.value.details()
    with pytest.raises(grpc.RpcError) as empty:
        client.embed([])
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_reflection_and_metrics(plain_servers):
    channel = make_sync_channel(plain_servers.grpc_target)
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    finally:
        channel.close()
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert {"nanoforge.api.inference.v1.InferenceService", "grpc.health.v1.Health"} <= services
    with urllib.request.urlopen(plain_servers.http_base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'nanoforge_requests_total{api="grpc",method="Generate",status="OK"}' in text
    assert 'status="INVALID_ARGUMENT"' in text
    for gauge in ("queue_depth", "running", "batch_size", "tokens_per_s", "prefix_cache_hit_rate"):
        assert f"nanoforge_engine_{gauge} " in text
    assert "nanoforge_time_to_first_token_seconds_count" in text


def test_streams_from_threads_all_finish(plain_servers):
    """Blocking clients on 6 threads at once (the shape a load generator has)."""
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        with InferenceClient(plain_servers.grpc_target, timeout=60) as c:
            results[i] = [
                t for ch in c.generate_stream(f"thread {i}", max_new_tokens=8, **GREEDY) for t in ch.token_ids
            ]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(6)) and all(results.values())
    with InferenceClient(plain_servers.grpc_target) as c:
        solo = [t for ch in c.generate_stream("thread 3", max_new_tokens=8, **GREEDY) for t in ch.token_ids]
    assert results[3] == solo


def test_generate_request_builder_rejects_bad_prompt():
    from nanoforge.api.inference_client import generate_request

    assert generate_request("x").WhichOneof("prompt") == "text"
    assert isinstance(generate_request([1, 2]), inference_pb2.GenerateRequest)
    with pytest.raises(ValueError, match="bad chat role"):
        generate_request([{"role": "robot", "content": "x"}])


def test_message_size_and_prompt_length_limits(client):
    with pytest.raises(grpc.RpcError) as too_big:  # the server's gRPC message limit is 16 MiB
        client.tokenize("x" * (17 * 1024 * 1024))
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as too_long:  # Limits.max_prompt_chars is 1,000,000
        client.generate("y" * 1_000_001, max_new_tokens=1)
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "1000000" in too_long.value.details()


def test_full_queue_is_resource_exhausted(tiny_model_dir, start_servers_fn):
    from nanoforge.inference_server.cli import ServeOptions

    small = start_servers_fn(
        tiny_model_dir, ServeOptions(port=0, http_port=None), max_batch_size=1, max_queue=1
    )
    try:

        async def one(c, i):
            try:
                return [
                    t
                    async for ch in c.generate_stream(f"q{i}", max_new_tokens=40, **GREEDY)
                    for t in ch.token_ids
                ]
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        async def scenario():
            async with AsyncInferenceClient(small.grpc_target, timeout=60) as c:
                return await asyncio.gather(*(one(c, i) for i in range(5)))

        outcomes = asyncio.run(scenario())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in outcomes
        assert any(isinstance(o, list) and o for o in outcomes)  # the admitted ones finished
        assert set(map(type, outcomes)) <= {list, grpc.StatusCode}
        assert small.wait_idle()["running"] == 0
    finally:
        small.close()
