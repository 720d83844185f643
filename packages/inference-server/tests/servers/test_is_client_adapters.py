"""``load_adapter`` / ``unload_adapter`` of the sync and async ``nanoforge.api.inference_client`` against a
real server: a PEFT adapter written by ``peft`` itself is loaded, changes greedy output, is listed, refuses
a duplicate name, and is gone (NOT_FOUND) once unloaded. Score and Embed with an adapter equal the
``peft``-merged model and differ from the base; Score's Usage counts context + continuation tokens."""

from __future__ import annotations

import asyncio
import copy

import grpc
import peft
import pytest
import torch

from nanoforge.api.inference_client import AsyncInferenceClient, InferenceClient
from nanoforge.core_model.hf import load_any_model
from nanoforge.inference_server.scoring import embed_rows, score_rows


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A rank-4 LoRA on q/v of the tiny served model with non-zero B (so it changes the output)."""
    base = load_any_model(tiny_model_dir).eval()
    pm = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    path = tmp_path_factory.mktemp("adapter") / "lora"
    pm.save_pretrained(str(path))
    return path


def _tokens(reply) -> list[int]:
    return list(reply.completions[0].token_ids)


def test_sync_client_loads_uses_and_unloads_an_adapter(plain_servers, adapter_dir) -> None:
    with InferenceClient(plain_servers.grpc_target, timeout=60) as client:
        plain = _tokens(client.generate("Once upon", max_new_tokens=12, temperature=0.0))
        loaded = client.load_adapter("sync_a", str(adapter_dir))
        assert loaded.adapter.name == "sync_a" and loaded.adapter.rank == 4
        modules = {m.rsplit(".", 1)[-1] for m in loaded.adapter.target_modules}  # blocks.0.attn.q_proj ...
        assert modules == {"q_proj", "v_proj"}
        assert loaded.adapter.num_parameters > 0 and loaded.usage.total_time_ms > 0
        listed = [a.name for a in client.list_models().models[0].adapters]
        assert "sync_a" in listed
        with_a = _tokens(client.generate("Once upon", adapter="sync_a", max_new_tokens=12, temperature=0.0))
        assert with_a != plain
        with pytest.raises(grpc.RpcError) as dup:
            client.load_adapter("sync_a", adapter_dir)
        assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
        again = client.load_adapter("sync_a", adapter_dir, replace=True)
        assert again.adapter.name == "sync_a"
        gone = client.unload_adapter("sync_a")
        assert gone.adapter.name == "sync_a"
        with pytest.raises(grpc.RpcError) as missing:
            client.generate("Once upon", adapter="sync_a", max_new_tokens=2)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as twice:
            client.unload_adapter("sync_a")
        assert twice.value.code() == grpc.StatusCode.NOT_FOUND and "sync_a" in twice.value.details()
        with pytest.raises(grpc.RpcError) as bad:
            client.load_adapter("bad", adapter_dir.parent / "nowhere")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nowhere" in bad.value.details()
        assert _tokens(client.generate("Once upon", max_new_tokens=12, temperature=0.0)) == plain


def test_async_client_loads_uses_and_unloads_an_adapter(plain_servers, adapter_dir) -> None:
    async def go() -> tuple[list[int], list[int], list[str], list[str], grpc.StatusCode]:
        async with AsyncInferenceClient(plain_servers.grpc_target, timeout=60) as client:
            plain = _tokens(await client.generate("Once upon", max_new_tokens=12, temperature=0.0))
            loaded = await client.load_adapter("async_a", adapter_dir)
            assert loaded.adapter.name == "async_a" and loaded.adapter.path == str(adapter_dir)
            reply = await client.generate("Once upon", adapter="async_a", max_new_tokens=12, temperature=0.0)
            listed = [a.name for a in (await client.list_models()).models[0].adapters]
            await client.unload_adapter("async_a")
            after = [a.name for a in (await client.list_models()).models[0].adapters]
            try:
                await client.unload_adapter("async_a")
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as e:
                code = e.code()
            return plain, _tokens(reply), listed, after, code

    plain, with_a, listed, after, code = asyncio.run(go())
    assert with_a != plain
    assert "async_a" in listed and "async_a" not in after
    assert code == grpc.StatusCode.NOT_FOUND


def test_adapter_request_arguments_are_checked_before_sending(plain_servers) -> None:
    with InferenceClient(plain_servers.grpc_target, timeout=10) as client:
        with pytest.raises(ValueError, match="adapter name is empty"):
            client.load_adapter("", "/x")
        with pytest.raises(ValueError, match="adapter path is empty"):
            client.load_adapter("a", "")


def _merged(tiny_model_dir, adapter_dir):
    """The served base model with the adapter merged into its weights by ``peft`` itself."""
    base = load_any_model(tiny_model_dir).eval()
    return peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()


def test_score_and_embed_with_an_adapter_equal_the_peft_merged_model(
    plain_servers, tiny_model_dir, adapter_dir
) -> None:
    merged = _merged(tiny_model_dir, adapter_dir)
    base = load_any_model(tiny_model_dir).eval()
    context, conts = [79, 110, 99, 101, 32, 117], [[112, 111, 110], [97, 32, 116, 105, 109, 101]]
    texts = ["hello world", "a fox"]
    with InferenceClient(plain_servers.grpc_target, timeout=60) as client:
        client.load_adapter("score_a", adapter_dir)
        try:
            plain = client.score(context, conts, token_logprobs=True)
            with_a = client.score(context, conts, adapter="score_a", token_logprobs=True)
            emb_plain = client.embed(texts, normalize=False)
            emb_a = client.embed(texts, adapter="score_a", normalize=False)
            ids = [list(client.tokenize(t).token_ids) for t in texts]
        finally:
            client.unload_adapter("score_a")
        with pytest.raises(grpc.RpcError) as gone:
            client.score(context, conts, adapter="score_a")
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND and "score_a" in gone.value.details()
        with pytest.raises(grpc.RpcError) as gone_e:
            client.embed(texts, adapter="score_a")
        assert gone_e.value.code() == grpc.StatusCode.NOT_FOUND
    want_a = score_rows(merged, context, conts)
    want_plain = score_rows(base, context, conts)
    for got, want in zip(with_a.scores, want_a):
        assert got.logprob == pytest.approx(want["logprob"], abs=1e-4)
        assert [t.logprob for t in got.token_logprobs] == pytest.approx(want["token_logprobs"], abs=1e-4)
    for got, want in zip(plain.scores, want_plain):
        assert got.logprob == pytest.approx(want["logprob"], abs=1e-4)
    assert all(abs(a.logprob - p.logprob) > 1e-2 for a, p in zip(with_a.scores, plain.scores))
    want_emb = embed_rows(merged, ids, normalize=False)
    for got, want in zip(emb_a.embeddings, want_emb):
        assert list(got.values) == pytest.approx(want, abs=1e-4)
    assert any(
        max(abs(x - y) for x, y in zip(a.values, p.values)) > 1e-3
        for a, p in zip(emb_a.embeddings, emb_plain.embeddings)
    )


def test_score_usage_counts_context_and_continuations_and_has_timings(plain_servers) -> None:
    context, conts = [79, 110, 99, 101, 32], [[112, 111, 110], [97, 32, 116, 105]]
    with InferenceClient(plain_servers.grpc_target, timeout=60) as client:
        u = client.score(context, conts).usage
        e = client.embed(["hello world"]).usage
    assert u.prompt_tokens == len(context) + 3 + 4 and u.completion_tokens == 0
    assert u.prefill_time_ms > 0 and u.queue_time_ms >= 0 and u.decode_time_ms == 0
    assert u.total_time_ms >= u.queue_time_ms + u.prefill_time_ms
    assert e.prefill_time_ms > 0 and e.total_time_ms >= e.queue_time_ms + e.prefill_time_ms
