"""Trainable token rows with LoRA (``lora.trainable_tokens``): ours against peft's ``trainable_token_indices``
(forward, gradients, tied head), files both ways, merge / unmerge, id validation, and the lora recipe."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from nanoforge.core_model.checkpoint import load_model, save_model
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import GPT, build_model
from nanoforge.trainer import lora
from nanoforge.trainer.adapters import LORA_IMPLS, LoraSettings
from nanoforge.trainer.finetune import run
from nanoforge.trainer.finetune_config import load_finetune_config

IDS = (3, 5, 60)
ROWS_KEY = "base_model.model.tok_emb.token_adapter.trainable_tokens_delta"
HEAD_KEY = "base_model.model.lm_head.token_adapter.trainable_tokens_delta"


def _gpt(tie: bool = True) -> GPT:
    torch.manual_seed(0)
    cfg = {
        "vocab_size": 64,
        "n_layer": 2,
        "n_head": 2,
        "d_model": 32,
        "max_seq_len": 16,
        "tie_embeddings": tie,
    }
    return build_model(ModelConfig.from_dict(cfg))


def _settings(ids: tuple[int, ...] = IDS) -> LoraSettings:
    return LoraSettings(4, 8.0, 0.0, ("q_proj", "v_proj"), ids)


def _token_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in module.named_parameters() if p.requires_grad and "token" in n]


def _pair(tie: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(peft, ours) over the same base, with the same random LoRA factors and token rows."""
    pm, ours = (
        LORA_IMPLS["peft"].attach(_gpt(tie), _settings()),
        LORA_IMPLS["nanoforge"].attach(_gpt(tie), _settings()),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        theirs = {n.replace(".default", ""): p for n, p in pm.named_parameters() if p.requires_grad}
        for key, p in lora._adapter_params(ours).items():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            theirs[key].copy_(p)
    return pm, ours


@pytest.mark.parametrize("tie", [True, False])
def test_lora_tokens_match_peft_forward_grads_and_tied_head(tie: bool) -> None:
    pm, ours = _pair(tie)
    assert len(_token_params(pm)) == len(_token_params(ours)) == (1 if tie else 2)
    x = torch.tensor([[3, 1, 5, 2, 60, 7], [9, 60, 60, 3, 4, 4]])
    out_p, out_o = pm(x), ours(x)
    assert torch.allclose(out_p, out_o, atol=1e-5)
    # the reference: a plain GPT whose chosen rows were overwritten (both tok_emb and, tied or not, lm_head)
    ref = lora.unload_lora(copy.deepcopy(ours), merge=True)
    assert torch.allclose(ref(x), out_o, atol=1e-5)
    if tie:  # the head reads the trained rows too: without them the logits of ids 3/5/60 would differ
        head_rows = ours.tok_emb.token_adapter.rows
        assert ours.lm_head.token_adapter is ours.tok_emb.token_adapter
        assert torch.allclose(ref.lm_head.weight[list(IDS)], head_rows, atol=0)
    out_p.square().mean().backward()
    out_o.square().mean().backward()
    for p, o in zip(_token_params(pm), _token_params(ours), strict=True):
        assert p.grad is not None and o.grad is not None and o.grad.abs().sum() > 0
        assert torch.allclose(p.grad, o.grad, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_lora_tokens_files_roundtrip_with_peft(tmp_path: Path, tie: bool) -> None:
    pm, ours = _pair(tie)
    x = torch.randint(0, 64, (2, 9))
    x[0, :3] = torch.tensor(IDS)
    expected = ours(x)
    LORA_IMPLS["nanoforge"].save(ours, tmp_path / "ours", _settings(), None)
    LORA_IMPLS["peft"].save(pm, tmp_path / "peft", _settings(), None)
    mine, theirs = (
        load_file(str(tmp_path / "ours" / lora.ADAPTER_WEIGHTS)),
        load_file(str(tmp_path / "peft" / lora.ADAPTER_WEIGHTS)),
    )
    assert mine.keys() == theirs.keys() and ROWS_KEY in mine and (HEAD_KEY in mine) == (not tie)
    for name in ("ours", "peft"):
        cfg = json.loads((tmp_path / name / lora.ADAPTER_CONFIG).read_text())
        layers = cfg["trainable_token_indices"]
        assert layers == ({"tok_emb": list(IDS)} if tie else {"tok_emb": list(IDS), "lm_head": list(IDS)})
    # ours -> peft and peft -> ours (and each by itself)
    for impl in ("peft", "nanoforge"):
        for src in ("ours", "peft"):
            loaded = LORA_IMPLS[impl].load(_gpt(tie), tmp_path / src).eval()
            assert torch.allclose(loaded(x), expected, atol=1e-5), (impl, src)
    if not tie:  # untied, plain peft needs no help from us
        plain = PeftModel.from_pretrained(_gpt(tie), str(tmp_path / "ours")).eval()
        assert torch.allclose(plain(x), expected, atol=1e-5)


@pytest.mark.parametrize("impl", ["peft", "nanoforge"])
def test_lora_tokens_merge_unmerge_and_plain_reload(tmp_path: Path, impl: str) -> None:
    _, ours = _pair(tie=True)
    x = torch.randint(0, 64, (2, 10))
    x[:, 0] = 5
    before = ours(x)
    w0 = ours.tok_emb.base_layer.weight.detach().clone()
    lora.merge_lora(ours)
    assert torch.allclose(ours(x), before, atol=1e-5)
    assert not torch.equal(ours.tok_emb.base_layer.weight, w0)
    changed = (ours.tok_emb.base_layer.weight != w0).any(dim=1).nonzero().flatten().tolist()
    assert changed == sorted(IDS)  # only the chosen rows moved
    lora.unmerge_lora(ours)
    assert torch.equal(ours.tok_emb.base_layer.weight, w0)
    assert torch.allclose(ours(x), before, atol=1e-5)
    # the merged checkpoint, read back as a plain GPT, is the adapted model
    LORA_IMPLS["nanoforge"].save(ours, tmp_path / "a", _settings(), None)
    adapted = LORA_IMPLS[impl].load(_gpt(), tmp_path / "a").eval()
    with torch.no_grad():
        expected = adapted(x)
    save_model(LORA_IMPLS[impl].merged(adapted), tmp_path / "m")
    plain = load_model(tmp_path / "m").eval()
    assert plain.lm_head.weight is plain.tok_emb.weight
    assert torch.allclose(plain(x), expected, atol=1e-5)
    assert not torch.allclose(_gpt()(x), expected, atol=1e-3)


def test_lora_tokens_bad_ids_are_named(tmp_path: Path, ft_overrides: list[str]) -> None:
    for impl in ("peft", "nanoforge"):
        with pytest.raises(
            ValueError, match=r"token id 64 is not in the model's vocabulary \(vocab_size=64\)"
        ):
            LORA_IMPLS[impl].attach(_gpt(), _settings((3, 64)))
        with pytest.raises(ValueError, match="token id 5 is listed twice"):
            LORA_IMPLS[impl].attach(_gpt(), _settings((5, 5)))
    with pytest.raises(ValueError, match=r"token id -1 is not in .*accepted: ints 0..63"):
        lora.check_token_ids([-1], 64)
    with pytest.raises(ValueError, match="tied to tok_emb"):
        lora.inject_token_rows(_gpt(), {"lm_head": [3]})
    with pytest.raises(ValueError, match=r"layers \['wte'\]; accepted: tok_emb, lm_head"):
        lora.inject_token_rows(_gpt(), {"wte": [3]})
    with pytest.raises(
        ValueError, match=r"lora.trainable_tokens='3,x': 'x' is not a token id; accepted: special"
    ):
        load_finetune_config(None, [*ft_overrides, "lora.trainable_tokens=3,x"])
    with pytest.raises(ValueError, match="token id 999 is not in the model's vocabulary"):
        run(
            load_finetune_config(None, [*ft_overrides, "lora.trainable_tokens=5,999"], method="lora"),
            tmp_path / "r",
        )
    cfg = lora.peft_config_dict(
        ["q_proj"], 4, 8, 0.0, None, {"tok_emb": [3, 99]}
    )  # a file for a bigger vocab
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / lora.ADAPTER_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"token id 99 is not in the model's vocabulary \(vocab_size=64\)"):
        LORA_IMPLS["peft"].load(_gpt(), tmp_path / "a")


@pytest.mark.parametrize("impl", ["peft", "nanoforge"])
def test_lora_tokens_recipe_trains_the_chat_special_rows(
    tmp_path: Path, ft_overrides: list[str], base_model_dir: Path, chat_tokenizer, impl: str
) -> None:
    over = [*ft_overrides, f"lora.impl={impl}", "lora.merge=true", "optim.lr=1e-2", "train.max_iters=10"]
    special = run(load_finetune_config(None, over, method="lora"), tmp_path / "s")
    none = run(
        load_finetune_config(None, [*over, "lora.trainable_tokens=none"], method="lora"), tmp_path / "n"
    )
    cfg = json.loads((tmp_path / "s" / "adapter" / lora.ADAPTER_CONFIG).read_text())
    used = {chat_tokenizer.special_tokens[s] for s in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")}
    assert set(cfg["trainable_token_indices"]["tok_emb"]) == used  # tied base: tok_emb only
    assert special["trainable_params"] - none["trainable_params"] == len(used) * 32
    rows = load_file(str(tmp_path / "s" / "adapter" / lora.ADAPTER_WEIGHTS))[ROWS_KEY]
    base = load_model(base_model_dir)
    ids = cfg["trainable_token_indices"]["tok_emb"]
    assert (rows - base.tok_emb.weight[ids].detach()).abs().amax(dim=1).min() > 1e-4  # every row trained
    merged = load_model(tmp_path / "s" / "final")
    assert torch.allclose(merged.tok_emb.weight[ids], rows, atol=0)
    adapted = LORA_IMPLS[impl].load(base, tmp_path / "s" / "adapter").eval()
    x = torch.tensor([[ids[0], 17, 40, ids[1], 9, ids[-1]]])
    assert torch.allclose(adapted(x), merged(x), atol=1e-5)
    # lora.trainable_tokens=none: a plain LoRA adapter, as before
    cfg_none = json.loads((tmp_path / "n" / "adapter" / lora.ADAPTER_CONFIG).read_text())
    keys_none = load_file(str(tmp_path / "n" / "adapter" / lora.ADAPTER_WEIGHTS)).keys()
    assert cfg_none["trainable_token_indices"] is None and not any("token" in k for k in keys_none)


def test_lora_tokens_config_forms() -> None:
    from nanoforge.trainer.finetune_config import finetune_config_from_dict

    def ids(value: object, special: tuple[int, ...] = (9, 4, 9)) -> tuple[int, ...]:
        return finetune_config_from_dict({"lora": {"trainable_tokens": value}}).lora.token_ids(special)

    assert ids("special") == (4, 9)  # the special ids in the data, once each
    assert ids("none") == ()
    assert ids("5,17") == (5, 17) and ids(5) == (5,) and ids([3, 8]) == (3, 8)  # `=5` / YAML lists parse
    assert load_finetune_config(None, []).lora.trainable_tokens == "special"  # the default
    with pytest.raises(ValueError, match=r"'-3' is not a token id"):
        ids("-3")
