"""Config loading: shipped files, overrides, and the errors for unknown keys and wrong types."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from nanoforge.trainer.config import CHOICES, apply_overrides, load_config, parse_override, shipped_configs
from nanoforge.trainer.optim import SCHEDULES


def test_shipped_configs_load_and_validate() -> None:
    names = shipped_configs()
    assert {"shakespeare-char", "demo-bpe", "llama-small", "sft-demo"} <= set(names)
    for name in (n for n in names if not n.startswith("sft")):  # sft-* are fine-tuning configs
        cfg = load_config(name)
        assert cfg.train.block_size <= cfg.model["max_seq_len"]
        cfg.model_config(vocab_size=4096)  # a valid ModelConfig once the vocab is known


def test_shakespeare_char_matches_nanogpt_cpu_recipe() -> None:
    cfg = load_config("shakespeare-char")
    m = cfg.model_config()
    assert (m.n_layer, m.n_head, m.d_model, m.max_seq_len, m.vocab_size, m.dropout) == (
        4,
        4,
        128,
        64,
        256,
        0.0,
    )
    assert (cfg.train.batch_size, cfg.train.block_size, cfg.train.max_iters) == (12, 64, 2000)
    assert (cfg.optim.lr, cfg.schedule.min_lr, cfg.schedule.warmup_iters) == (1e-3, 1e-4, 100)
    assert (cfg.optim.beta2, cfg.train.grad_clip, cfg.optim.weight_decay) == (0.99, 1.0, 0.1)


def test_llama_config_is_llama_shaped() -> None:
    m = load_config("llama-small").model_config(vocab_size=8192)
    assert (m.norm, m.mlp, m.positions, m.tie_embeddings) == ("rmsnorm", "swiglu", "rope", False)
    assert m.kv_heads < m.n_head


def test_sft_demo_config_loads_for_both_methods() -> None:
    from nanoforge.trainer.finetune_config import load_finetune_config

    full = load_finetune_config("sft-demo", method="full")
    lora = load_finetune_config("sft-demo", ["lora.r=4"], method="lora")
    assert (full.base.method, lora.base.method, lora.lora.r) == ("full", "lora", 4)
    assert lora.lora.settings().target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    with pytest.raises(ValueError, match=r"base.method='qlora' is not supported; accepted: full, lora"):
        load_finetune_config("sft-demo", ["base.method=qlora"])


@pytest.mark.parametrize("name", ["shakespeare-char", "demo-bpe", "llama-small", "sft-demo"])
def test_every_knob_is_commented(name: str) -> None:
    text = (resources.files("nanoforge.trainer") / "configs" / f"{name}.yaml").read_text()
    for line in text.splitlines():
        if re.match(r"^\s+\w+:\s*\S", line):  # a key with a value inside a section
            assert "#" in line, f"{name}: knob without a comment: {line!r}"


def test_dotted_overrides_and_yaml_values() -> None:
    cfg = load_config(
        "shakespeare-char", ["model.n_layer=2", "optim.lr=3e-4", "train.threads=null", "data.dir=x"]
    )
    assert cfg.model["n_layer"] == 2 and cfg.optim.lr == 3e-4 and cfg.train.threads is None
    assert cfg.data.dir == "x"
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert apply_overrides({}, ["x.y.z=true"]) == {"x": {"y": {"z": True}}}


def test_int_accepted_where_float_expected() -> None:
    assert load_config("shakespeare-char", ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.bach_size=4", r"unknown key.*train\.bach_size.*accepted in 'train'.*batch_size"),
        ("trian.seed=1", r"unknown config section.*trian.*accepted: model, data, train"),
        ("train.batch_size=four", r"train\.batch_size='four' has type str; expected int"),
        ("train.compile=1", r"train\.compile=1 has type int; expected bool"),
        ("train.threads=1.5", r"train\.threads=1\.5 has type float; expected int or null"),
        (
            "schedule.name=linear",
            r"schedule\.name='linear' is not supported; accepted: cosine, wsd, constant",
        ),
        (
            "train.dtype=fp8",
            r"train\.dtype='fp8' is not supported; accepted: float32, bfloat16, float16, auto",
        ),
        ("model.n_layers=2", r"unknown model config keys \['n_layers'\]"),
        ("model.mlp=tanh", r"mlp='tanh' is not supported"),
        ("train.block_size=128", r"train\.block_size=128 exceeds model\.max_seq_len=64"),
        ("optim.beta2=1.5", r"optim\.beta2=1\.5 must be in \[0, 1\)"),
        ("schedule.min_lr=1", r"schedule\.min_lr=1\.0 must not exceed optim\.lr"),
        ("train.max_iters=0", r"train\.max_iters=0 must be > 0"),
        ("novalue", r"must look like section\.key=value"),
    ],
)
def test_bad_configs_name_the_key(override: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_config("shakespeare-char", [override])


def test_unknown_config_name_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"neither a file nor a shipped config; shipped: demo-bpe"):
        load_config("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_config(bad)


def test_schedule_choices_are_the_registry() -> None:
    assert CHOICES["schedule.name"] == tuple(SCHEDULES)
