"""Adapters with trainable token rows (peft's ``trainable_token_indices``): served per batch row they give
peft's logits (tied and untied heads), share a batch with the base model and other adapters, generate what
the merged model generates, and bad ids / layouts are refused before anything is attached."""

from __future__ import annotations

import asyncio
import copy
import json

import peft
import pytest
import torch
from peft.utils.other import TrainableTokensWrapper
from safetensors.torch import load_file, save_file

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.generate import generate
from nanoforge.core_model.model import GPT
from nanoforge.inference_server.engine import EngineConfig
from nanoforge.inference_server.errors import InvalidRequest
from nanoforge.inference_server.lora import AdapterSet, MultiTokenRows
from nanoforge.inference_server.text import ServingModel
from nanoforge.inference_server.types import GenerateInput, SamplingOptions
from nanoforge.tokenizer import Tokenizer
from nanoforge.tokenizer.chat import CHATML_SPECIALS, chatml_template

torch.set_num_threads(1)
TOK = Tokenizer([], special_tokens=CHATML_SPECIALS, chat_template=chatml_template())
IDS = [104, 105, 256, 257]  # "h", "i" and two ChatML specials


def tiny_gpt(tie: bool) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=260, n_layer=2, n_head=4, d_model=32, max_seq_len=128, positions="rope", tie_embeddings=tie
    )
    return GPT(cfg).eval()


def token_adapter(base: GPT, path, seed: int, tie: bool):
    """A peft LoRA + trainable-token adapter (random non-zero weights) saved to ``path``; returns the model."""
    layers = {"tok_emb": IDS} if tie else {"tok_emb": IDS, "lm_head": IDS}
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], trainable_token_indices=layers
    )
    pm = peft.get_peft_model(copy.deepcopy(base), config)
    if tie:  # peft ties the head only for transformers models; wrap it as peft does for them
        inner = pm.get_base_model()
        adapter = inner.tok_emb.token_adapter
        inner.lm_head = TrainableTokensWrapper(
            inner.lm_head, "default", token_indices=IDS, tied_adapter=adapter
        )
        inner.lm_head.set_adapter("default", inference_mode=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name or "trainable_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(path))
    return pm.eval()


@pytest.mark.parametrize("tie", [True, False])
def test_token_rows_give_peft_logits_per_row(tmp_path, tie):
    base = tiny_gpt(tie)
    pm = token_adapter(base, tmp_path / "t", seed=1, tie=tie)
    keys = load_file(str(tmp_path / "t" / "adapter_model.safetensors"))
    assert ("base_model.model.lm_head.token_adapter.trainable_tokens_delta" in keys) == (not tie)
    served = copy.deepcopy(base)
    aset = AdapterSet(served)
    info = aset.add("t", tmp_path / "t")
    assert "tok_emb (token rows)" in info["target_modules"]
    assert isinstance(served.tok_emb, MultiTokenRows) and isinstance(served.lm_head, MultiTokenRows)
    x = torch.tensor([[104, 7, 256, 105, 30, 257], [1, 2, 3, 4, 5, 6], [257, 104, 9, 9, 105, 256]])
    with torch.no_grad():
        want = pm(x)
        with pm.disable_adapter():
            plain = pm(x)
        aset.route(["t", None, "t"])
        got = served(x)
        aset.route(None)
        after = served(x)
    assert (want - plain)[:, :, IDS].abs().max() > 1e-2  # the rows change the logits of their own ids
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[2], want[2], atol=1e-5)
    assert torch.allclose(got[1], plain[1], atol=1e-6)
    assert torch.allclose(after, plain, atol=1e-6)
    assert torch.equal(served.tok_emb.weight, base.tok_emb.weight)  # the base weight is never written


def test_token_row_adapter_generates_like_the_merged_model_and_shares_a_batch(tmp_path):
    base = tiny_gpt(tie=True)
    pm = token_adapter(base, tmp_path / "t", seed=2, tie=True)
    merged = copy.deepcopy(pm).merge_and_unload().eval()
    assert merged.lm_head.weight is merged.tok_emb.weight
    prompts = ["hi there", "oh hi"]
    ref = [generate(merged, [list(p.encode())], max_new_tokens=10, temperature=0)[0] for p in prompts]
    sm = ServingModel.from_parts(copy.deepcopy(base), TOK, config=EngineConfig(max_batch_size=4))
    try:
        asyncio.run(sm.load_adapter("t", tmp_path / "t"))

        def req(prompt: str, adapter: str | None) -> GenerateInput:
            opts = SamplingOptions(temperature=0.0, max_new_tokens=10, seed=0)
            return GenerateInput(prompt=prompt, adapter=adapter, options=opts)

        async def together():
            jobs = [req(p, "t") for p in prompts] + [req(p, None) for p in prompts]
            return await asyncio.gather(*(sm.complete(j) for j in jobs))

        out = [c.token_ids for c in asyncio.run(together())]
        info = asyncio.run(sm.unload_adapter("t"))
        assert info["name"] == "t"
        plain = [asyncio.run(sm.complete(req(p, None))).token_ids for p in prompts]
    finally:
        asyncio.run(sm.shutdown())
    stops = set(sm.stop_ids)
    assert out[:2] == [[t for t in r if t not in stops] for r in ref]
    assert out[2:] == plain and out[:2] != plain


def test_bad_token_row_adapters_are_refused_before_attaching(tmp_path):
    base = tiny_gpt(tie=True)
    token_adapter(base, tmp_path / "t", seed=3, tie=True)
    # ids beyond this model's vocabulary (an adapter for a bigger vocab)
    small = copy.deepcopy(base)
    cfg = json.loads((tmp_path / "t" / "adapter_config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg["trainable_token_indices"] = {"tok_emb": [104, 105, 256, 300]}
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(
        load_file(str(tmp_path / "t" / "adapter_model.safetensors")), str(bad / "adapter_model.safetensors")
    )
    aset = AdapterSet(small)
    with pytest.raises(ValueError, match=r"token id 300 is not in the model's vocabulary \(vocab_size=260\)"):
        aset.add("x", bad)
    assert aset.names() == [] and not small.tok_emb.adapters and not small.blocks[0].attn.q_proj.adapters
    # a tied model cannot take separate lm_head rows
    untied_dir = tmp_path / "u"
    token_adapter(tiny_gpt(tie=False), untied_dir, seed=4, tie=False)
    with pytest.raises(ValueError, match="ties lm_head to tok_emb"):
        AdapterSet(copy.deepcopy(base)).add("u", untied_dir)
    # over the server API: the same message as an InvalidRequest, nothing loaded
    sm = ServingModel.from_parts(copy.deepcopy(base), TOK, config=EngineConfig(max_batch_size=2))
    try:
        with pytest.raises(InvalidRequest, match="token id 300"):
            asyncio.run(sm.load_adapter("x", bad))
        assert sm.list_adapters() == []
    finally:
        asyncio.run(sm.shutdown())
