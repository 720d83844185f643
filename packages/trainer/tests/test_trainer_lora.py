"""LoRA: our LoRALinear against peft (forward, gradients, files both ways), merge/unmerge, the lora recipe,
and LoRA on an imported HF Llama checkpoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from nanoforge.core_model.checkpoint import load_model
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.hf.registry import load_any_model
from nanoforge.core_model.model import GPT, build_model
from nanoforge.trainer import lora
from nanoforge.trainer.adapters import LORA_IMPLS
from nanoforge.trainer.finetune import run
from nanoforge.trainer.finetune_config import load_finetune_config

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _gpt(seed: int = 0, **over: object) -> GPT:
    torch.manual_seed(seed)
    cfg = {"vocab_size": 64, "n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 16, **over}
    return build_model(ModelConfig.from_dict(cfg))


def _pair(r: int = 4, alpha: float = 8.0) -> tuple[torch.nn.Module, GPT]:
    """(peft model, our model) over the same base weights, with the same random non-zero A and B."""
    base = _gpt()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, TARGETS, r, alpha)
    pm = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0))
    g = torch.Generator().manual_seed(3)
    peft_params = dict(pm.named_parameters())
    for name, layer in lora.lora_layers(ours).items():
        for which in ("lora_A", "lora_B"):
            w = torch.randn(getattr(layer, which).weight.shape, generator=g) * 0.1
            getattr(layer, which).weight.data.copy_(w)
            peft_params[f"base_model.model.{name}.{which}.default.weight"].data.copy_(w)
    return pm, ours


def test_lora_own_layer_matches_peft_forward_and_grads() -> None:
    pm, ours = _pair()
    x = torch.randint(0, 64, (3, 10))
    out_p, out_o = pm(x), ours(x)
    assert torch.allclose(out_p, out_o, atol=1e-6)
    assert not torch.allclose(out_o, lora.unload_lora(copy.deepcopy(ours), merge=False)(x), atol=1e-3)
    out_p.square().mean().backward()
    out_o.square().mean().backward()
    peft_params = dict(pm.named_parameters())
    trainable = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 2 * len(TARGETS)
    for name, p in trainable.items():
        module, _, _ = name.rpartition(".")  # blocks.0.attn.q_proj.lora_A
        ref = peft_params[f"base_model.model.{module}.default.weight"]
        assert ref.grad is not None and torch.allclose(p.grad, ref.grad, atol=1e-6), name
    assert sum(p.numel() for p in trainable.values()) == sum(
        p.numel() for p in pm.parameters() if p.requires_grad
    )


def test_lora_fresh_layer_is_identity_and_inits_like_peft() -> None:
    base = _gpt()
    x = torch.randint(0, 64, (2, 8))
    ref = base(x)
    lora.inject_lora(base, ["q_proj"], 8, 16)
    assert torch.equal(base(x), ref)  # B = 0 at init
    layer = next(iter(lora.lora_layers(base).values()))
    bound = 1 / (32**0.5)  # kaiming_uniform(a=sqrt(5)) on fan_in 32, as nn.Linear and peft
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 4


def test_lora_merge_unmerge_roundtrip() -> None:
    _, ours = _pair()
    x = torch.randint(0, 64, (2, 12))
    before = ours(x)
    w0 = {n: m.base_layer.weight.detach().clone() for n, m in lora.lora_layers(ours).items()}
    lora.merge_lora(ours)
    assert torch.allclose(ours(x), before, atol=1e-5)
    assert all(not torch.equal(m.base_layer.weight, w0[n]) for n, m in lora.lora_layers(ours).items())
    lora.unmerge_lora(ours)
    assert all(
        torch.allclose(m.base_layer.weight, w0[n], atol=1e-6) for n, m in lora.lora_layers(ours).items()
    )
    assert torch.allclose(ours(x), before, atol=1e-5)
    plain = lora.unload_lora(ours, merge=True)
    assert not lora.lora_layers(plain) and isinstance(plain.blocks[0].attn.q_proj, torch.nn.Linear)
    assert torch.allclose(plain(x), before, atol=1e-5)


def test_lora_files_roundtrip_with_peft(tmp_path: Path) -> None:
    pm, ours = _pair()
    x = torch.randint(0, 64, (2, 9))
    expected = ours(x)
    # ours -> peft
    lora.save_adapter(ours, tmp_path / "ours", TARGETS, base_model=None)
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    loaded = PeftModel.from_pretrained(_gpt(), str(tmp_path / "ours"))
    assert torch.allclose(loaded(x), expected, atol=1e-6)
    # peft -> ours
    pm.save_pretrained(str(tmp_path / "peft"))
    mine = _gpt()
    names = lora.load_adapter(mine, tmp_path / "peft")
    assert len(names) == 2 * len(TARGETS)
    assert torch.allclose(mine(x), expected, atol=1e-6)


def test_lora_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"match no nn.Linear.*accepted: .*q_proj"):
        lora.inject_lora(_gpt(), ["qkv"], 4, 8)
    with pytest.raises(ValueError, match="rank r=0"):
        lora.LoRALinear(torch.nn.Linear(4, 4), 0, 1.0)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}')
    with pytest.raises(ValueError, match="accepted: LORA"):
        lora.load_adapter(_gpt(), tmp_path)
    with pytest.raises(ValueError, match="not found"):
        lora.load_adapter(_gpt(), tmp_path / "nope")


@pytest.mark.parametrize("impl", ["peft", "nanoforge"])
def test_lora_recipe_adapter_reloads_in_peft(
    tmp_path: Path, ft_overrides: list[str], base_model_dir: Path, impl: str
) -> None:
    targets = "lora.target_modules=q_proj,k_proj,v_proj,o_proj,up_proj,down_proj"
    over = [*ft_overrides, f"lora.impl={impl}", targets, "lora.merge=true", "optim.lr=1e-2"]
    logs: list[dict] = []
    summary = run(load_finetune_config(None, over, method="lora"), tmp_path / "r", on_log=logs.append)
    adapter = tmp_path / "r" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    evals = [r["train_loss"] for r in logs if r["kind"] == "eval"]
    assert evals[-1] < evals[0] - 0.2, evals  # the adapters alone lower the loss of a random base
    assert summary["trainable_params"] < summary["total_params"] / 3
    x = torch.randint(0, 300, (2, 16))
    merged = load_model(tmp_path / "r" / "final")
    # peft's PeftModel.from_pretrained, plus tying the head to the trained special-token rows (our GPT is not a
    # transformers model, so peft does not know that lm_head is tied to tok_emb)
    reloaded = LORA_IMPLS["peft"].load(load_model(base_model_dir), adapter).eval()
    assert torch.allclose(reloaded(x), merged(x), atol=1e-5)
    assert not torch.allclose(load_model(base_model_dir)(x), merged(x), atol=1e-3)


def test_lora_on_imported_hf_llama(tmp_path: Path, ft_overrides: list[str], base_model_dir: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    hf_dir = tmp_path / "llama"
    LlamaForCausalLM(hf_cfg).save_pretrained(str(hf_dir), safe_serialization=True)
    over = [
        *ft_overrides,
        f"base.model={hf_dir}",
        f"data.tokenizer={base_model_dir / 'tokenizer'}",
        "lora.impl=nanoforge",
        "lora.target_modules=q_proj,v_proj,gate_proj,up_proj,down_proj",
        "lora.merge=true",
    ]
    run(load_finetune_config(None, over, method="lora"), tmp_path / "r")
    x = torch.randint(0, 300, (2, 16))
    merged = load_model(tmp_path / "r" / "final")
    via_peft = PeftModel.from_pretrained(load_any_model(hf_dir), str(tmp_path / "r" / "adapter")).eval()
    assert torch.allclose(via_peft(x), merged(x), atol=1e-5)
    cfg = json.loads((tmp_path / "r" / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(hf_dir)
    assert sorted(cfg["target_modules"]) == ["down_proj", "gate_proj", "q_proj", "up_proj", "v_proj"]


def test_lora_merge_cli(tmp_path: Path, ft_overrides: list[str], base_model_dir: Path) -> None:
    from click.testing import CliRunner

    from nanoforge.trainer.cli import group

    r = CliRunner().invoke(group, ["lora", "--out", str(tmp_path / "r"), *ft_overrides, "train.max_iters=6"])
    assert r.exit_code == 0, r.output
    assert "adapter in" in r.output and "final in" not in r.output
    args = ["merge", "--base", str(base_model_dir), "--adapter", str(tmp_path / "r" / "adapter")]
    r = CliRunner().invoke(group, [*args, "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    x = torch.randint(0, 300, (1, 12))
    via_peft = LORA_IMPLS["peft"].load(load_model(base_model_dir), tmp_path / "r" / "adapter").eval()
    assert torch.allclose(load_model(tmp_path / "m")(x), via_peft(x), atol=1e-5)
    assert (tmp_path / "m" / "tokenizer" / "tokenizer.json").is_file()
