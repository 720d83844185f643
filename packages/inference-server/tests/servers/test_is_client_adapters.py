"""``load_adapter`` / ``unload_adapter`` of the sync and async ``nanoforge.api.inference_client`` against a
real server: a PEFT adapter written by ``peft`` itself is loaded, changes greedy output, is listed, refuses
a duplicate name, and is gone (NOT_FOUND) once unloaded."""

from __future__ import annotations

import asyncio
import copy

import grpc
import peft
import pytest
import torch

from nanoforge.api.inference_client import AsyncInferenceClient, InferenceClient
from nanoforge.core_model.hf import load_any_model


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
