"""Multi-LoRA serving: adapters written by ``peft`` itself load and give peft's logits; rows with different
adapters share one batch yet each gets exactly its solo tokens; unknown / in-use / bad adapters get clear
errors; unload while idle; LoRA on a quantized model; HF Llama key names map to ours."""

from __future__ import annotations

import asyncio
import copy
import json

import peft
import pytest
import torch

from nanoforge.core_model.checkpoint import save_model
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.generate import generate
from nanoforge.core_model.model import GPT
from nanoforge.inference_server.engine import EngineConfig
from nanoforge.inference_server.errors import InvalidRequest, NotFound
from nanoforge.inference_server.lora import AdapterSet, MultiLoRALinear
from nanoforge.inference_server.lora.peft_format import our_module_name
from nanoforge.inference_server.text import ServingModel
from nanoforge.inference_server.types import GenerateInput, SamplingOptions
from nanoforge.tokenizer import Tokenizer
from nanoforge.tokenizer.chat import CHATML_SPECIALS, chatml_template
from nanoforge.tokenizer.io import save_tokenizer

torch.set_num_threads(1)
TOK = Tokenizer([], special_tokens=CHATML_SPECIALS, chat_template=chatml_template())


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=260, n_layer=2, n_head=4, d_model=32, max_seq_len=128, positions="rope")
    return GPT(cfg).eval()


def peft_adapter(base: GPT, path, seed: int, targets=("q_proj", "v_proj"), r: int = 4, alpha: int = 8):
    """Build an adapter with peft on a copy of ``base`` (non-zero lora_B), save it; return the peft model."""
    pm = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets))
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(path))
    return pm.eval()


def test_peft_written_adapter_gives_peft_logits_per_row(tmp_path):
    base = tiny_gpt()
    pm = peft_adapter(base, tmp_path / "a", seed=1)
    keys = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["target_modules"]
    assert sorted(keys) == ["q_proj", "v_proj"]
    served = copy.deepcopy(base)
    aset = AdapterSet(served)
    info = aset.add("a", tmp_path / "a")
    assert info["rank"] == 4 and info["alpha"] == 8.0 and len(info["target_modules"]) == 4
    assert isinstance(served.blocks[0].attn.q_proj, MultiLoRALinear)
    x = torch.randint(0, 260, (3, 10))
    with torch.no_grad():
        want = pm(x)
        with pm.disable_adapter():
            plain = pm(x)
        aset.route(["a", None, "a"])  # mixed rows: 0 and 2 on the adapter, 1 on the base model
        got = served(x)
        aset.route(None)
        after = served(x)
    assert (want - plain).abs().max() > 1e-2  # the adapter really changes the output
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[2], want[2], atol=1e-5)
    assert torch.allclose(got[1], plain[1], atol=1e-6)
    assert torch.allclose(after, plain, atol=1e-6)  # routing cleared: the base model again


def _served(tmp_path, **load) -> tuple[ServingModel, GPT]:
    base = tiny_gpt()
    save_model(base, tmp_path / "model")
    save_tokenizer(TOK, tmp_path / "model" / "tokenizer")
    peft_adapter(base, tmp_path / "a", seed=1)
    peft_adapter(base, tmp_path / "b", seed=2, targets=("q_proj", "v_proj", "up_proj"), r=2, alpha=4)
    adapters = {"a": tmp_path / "a", "b": tmp_path / "b"}
    sm = ServingModel.load(tmp_path / "model", adapters=adapters, max_batch_size=4, prefill_chunk=16, **load)
    return sm, base


def _req(prompt: str, adapter: str | None, n: int = 12) -> GenerateInput:
    return GenerateInput(
        prompt=prompt, adapter=adapter, options=SamplingOptions(temperature=0.0, max_new_tokens=n, seed=0)
    )


def test_different_adapters_share_a_batch_and_match_solo_runs(tmp_path):
    sm, _ = _served(tmp_path)
    seen: list[set[str | None]] = []
    route = sm.engine.router
    assert route is not None

    def spy(names):
        if names is not None:
            seen.append(set(names))
        route(names)

    sm.engine.router = spy
    long = "a prompt long enough to fill several prefix-cache blocks: " * 2  # cached per adapter (salt)
    jobs = [(long, "a"), (long, "b"), (long, None), ("other text", "a")]
    try:
        ref = []
        for p, a in jobs:  # core-model generate with every row routed to the adapter: no engine, no cache
            sm.adapters.route([a])
            out = generate(
                sm.model, [list(p.encode())], max_new_tokens=12, temperature=0, stop_token_ids=sm.stop_ids
            )
            sm.adapters.route(None)
            ref.append([t for t in out[0] if t not in sm.stop_ids])
        solo = [asyncio.run(sm.complete(_req(p, a))).token_ids for p, a in jobs]
        assert solo == ref
        assert sm.metrics()["prefix_cache_hit_tokens"] == 0  # same prompt, different adapters: no sharing
        assert asyncio.run(sm.complete(_req(long, "b"))).token_ids == ref[1]
        assert sm.metrics()["prefix_cache_hit_tokens"] > 0  # same adapter again: cache hit, same tokens

        async def together():
            return await asyncio.gather(*(sm.complete(_req(p, a)) for p, a in jobs))

        seen.clear()
        batched = [c.token_ids for c in asyncio.run(together())]
    finally:
        asyncio.run(sm.shutdown())
    assert batched == solo
    assert len({tuple(t) for t in solo[:3]}) == 3  # a, b and the base model write different tokens
    assert any({"a", "b", None} <= s for s in seen)  # one decode step had rows of all three


def test_unknown_adapter_in_use_refusal_and_unload_while_idle(tmp_path):
    sm, _ = _served(tmp_path)
    try:
        with pytest.raises(NotFound, match="unknown adapter 'zzz'; loaded adapters: a, b"):
            asyncio.run(sm.complete(_req("x", "zzz")))
        with pytest.raises(NotFound, match="unknown adapter 'zzz'"):
            asyncio.run(sm.unload_adapter("zzz"))
        assert [a["name"] for a in sm.list_adapters()] == ["a", "b"]
        with_a = asyncio.run(sm.complete(_req("hello", "a"))).token_ids

        async def unload_while_streaming():
            gen = sm.generate(_req("hello", "a", n=40))
            await gen.__anext__()
            try:
                with pytest.raises(InvalidRequest, match="adapter 'a' is in use by 1 request"):
                    await sm.unload_adapter("a")
            finally:
                await gen.aclose()

        asyncio.run(unload_while_streaming())
        info = asyncio.run(sm.unload_adapter("a"))  # idle now
        assert info["name"] == "a" and [a["name"] for a in sm.list_adapters()] == ["b"]
        with pytest.raises(NotFound, match="unknown adapter 'a'"):
            asyncio.run(sm.complete(_req("hello", "a")))
        base_tokens = asyncio.run(sm.complete(_req("hello", None))).token_ids
        assert base_tokens != with_a
        again = asyncio.run(sm.load_adapter("a", tmp_path / "a"))  # reload: same tokens as before
        assert again["name"] == "a"
        assert asyncio.run(sm.complete(_req("hello", "a"))).token_ids == with_a
        with pytest.raises(InvalidRequest, match="already loaded"):
            asyncio.run(sm.load_adapter("a", tmp_path / "a"))
    finally:
        asyncio.run(sm.shutdown())


def test_bad_adapter_dirs_are_clear_errors(tmp_path):
    sm, _ = _served(tmp_path)
    try:
        with pytest.raises(InvalidRequest, match="does not exist"):
            asyncio.run(sm.load_adapter("x", tmp_path / "nowhere"))
        (tmp_path / "empty").mkdir()
        with pytest.raises(InvalidRequest, match=r"adapter_config\.json is missing"):
            asyncio.run(sm.load_adapter("x", tmp_path / "empty"))
        wide = GPT(ModelConfig(vocab_size=260, n_layer=2, n_head=4, d_model=48, max_seq_len=64))
        peft_adapter(wide, tmp_path / "wide", seed=3)
        with pytest.raises(InvalidRequest, match=r"do not fit a \(32, 32\) layer"):
            asyncio.run(sm.load_adapter("x", tmp_path / "wide"))
        assert [a["name"] for a in sm.list_adapters()] == ["a", "b"]
        assert all(not m.adapters.get("x") for m in sm.model.modules() if isinstance(m, MultiLoRALinear))
    finally:
        asyncio.run(sm.shutdown())


def test_lora_on_an_int8_model(tmp_path):
    sm, _ = _served(tmp_path, quantize="int8")
    try:
        wrapper = sm.model.blocks[0].attn.q_proj
        assert isinstance(wrapper, MultiLoRALinear) and type(wrapper.base).__name__ == "Int8Linear"
        a = asyncio.run(sm.complete(_req("hello", "a"))).token_ids
        base = asyncio.run(sm.complete(_req("hello", None))).token_ids
        assert len(a) >= 1 and a != base
    finally:
        asyncio.run(sm.shutdown())


def test_hf_llama_peft_keys_map_to_our_modules():
    assert our_module_name("base_model.model.model.layers.3.self_attn.q_proj") == "blocks.3.attn.q_proj"
    assert our_module_name("base_model.model.model.layers.0.mlp.down_proj") == "blocks.0.mlp.down_proj"
    assert our_module_name("base_model.model.blocks.1.attn.v_proj") == "blocks.1.attn.v_proj"


def test_base_model_serves_normally_with_no_adapter_loaded():
    sm = ServingModel.from_parts(tiny_gpt(), TOK, config=EngineConfig(max_batch_size=2))
    try:
        assert sm.list_adapters() == [] and sm.engine.router is not None
        out = asyncio.run(sm.complete(_req("hi", None, n=3)))
        assert len(out.token_ids) >= 1
    finally:
        asyncio.run(sm.shutdown())


def test_adapter_trained_on_an_hf_llama_applies_to_the_imported_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    from nanoforge.core_model.hf import load_any_model

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=260,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "llama")
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "down_proj"]))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(tmp_path / "ad"))
    ours = load_any_model(tmp_path / "llama").eval()
    aset = AdapterSet(ours)
    info = aset.add("hf", tmp_path / "ad")
    assert "blocks.1.mlp.down_proj" in info["target_modules"]
    x = torch.randint(0, 260, (2, 9))
    with torch.no_grad():
        want = pm(input_ids=x).logits
        with pm.disable_adapter():
            plain = pm(input_ids=x).logits
        aset.route(["hf", "hf"])
        got = ours(x)
        aset.route(None)
    assert (want - plain).abs().max() > 1e-2
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())


def test_load_generate_unload_over_grpc(tmp_path):
    grpc = pytest.importorskip("grpc")
    from nanoforge.api.inference.v1 import inference_pb2, inference_pb2_grpc
    from nanoforge.api.inference_client import generate_request
    from nanoforge.inference_server.cli import ServeOptions, start_servers

    base = tiny_gpt()
    save_model(base, tmp_path / "model")
    save_tokenizer(TOK, tmp_path / "model" / "tokenizer")
    peft_adapter(base, tmp_path / "a", seed=1)
    sm = ServingModel.load(tmp_path / "model", name="tiny", max_batch_size=2)

    async def go():
        servers = await start_servers(sm, ServeOptions(port=0, http_port=None))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{servers.grpc_port}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                req = inference_pb2.LoadAdapterRequest(name="a", path=str(tmp_path / "a"))
                loaded = await stub.LoadAdapter(req)
                again = await stub.LoadAdapter(
                    inference_pb2.LoadAdapterRequest(name="a", path=str(tmp_path / "a"), replace=True)
                )
                with pytest.raises(grpc.aio.AioRpcError) as dup:
                    await stub.LoadAdapter(req)
                listed = await stub.ListModels(inference_pb2.ListModelsRequest())

                def gen(adapter: str):
                    return stub.Generate(
                        generate_request("hello", adapter=adapter, max_new_tokens=8, temperature=0.0)
                    )

                with_a, plain = await gen("a"), await gen("")
                await stub.UnloadAdapter(inference_pb2.UnloadAdapterRequest(name="a"))
                with pytest.raises(grpc.aio.AioRpcError) as gone:
                    await gen("a")
                return loaded, again, dup.value, listed, with_a, plain, gone.value
        finally:
            await servers.stop(grace=1.0)

    loaded, again, dup, listed, with_a, plain, gone = asyncio.run(go())
    assert loaded.adapter.name == "a" and loaded.adapter.rank == 4 and loaded.adapter.num_parameters > 0
    assert again.adapter.name == "a" and dup.code() == grpc.StatusCode.ALREADY_EXISTS
    assert [a.name for a in listed.models[0].adapters] == ["a"]
    solo = asyncio.run(_solo_tokens(tmp_path))
    assert list(with_a.completions[0].token_ids) == solo != list(plain.completions[0].token_ids)
    assert gone.code() == grpc.StatusCode.NOT_FOUND and "unknown adapter 'a'" in gone.details()


async def _solo_tokens(tmp_path) -> list[int]:
    sm = ServingModel.load(tmp_path / "model", adapters={"a": tmp_path / "a"}, max_batch_size=1)
    try:
        return (await sm.complete(_req("hello", "a", n=8))).token_ids
    finally:
        await sm.shutdown()
