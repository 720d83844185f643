"""ModelConfig: validation, resolved sizes, JSON round trip, registries in sync with accepted names."""

import dataclasses
import json

import pytest

from nanoforge.core_model.attention import ATTENTION
from nanoforge.core_model.config import (
    ATTENTION_KINDS,
    MLP_KINDS,
    NORM_KINDS,
    POSITION_KINDS,
    ROPE_SCALING_TYPES,
    ModelConfig,
)
from nanoforge.core_model.layers import MLPS, NORMS, POSITIONS, ROPE_INV_FREQ

BASE = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=64)


def test_resolved_sizes() -> None:
    c = ModelConfig(**BASE)
    assert (c.kv_heads, c.head_size, c.mlp_width) == (4, 8, 128)
    c = ModelConfig(**BASE, n_kv_head=1, head_dim=16, mlp="swiglu")
    assert (c.kv_heads, c.head_size) == (1, 16)
    assert c.mlp_width == 128  # int(8/3*32) = 85 -> rounded up to a multiple of 64
    assert ModelConfig(**{**BASE, "d_model": 384, "n_head": 6}, mlp="swiglu").mlp_width == 1024
    assert ModelConfig(**BASE, d_mlp=50).mlp_width == 50


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"vocab_size": 0}, "vocab_size=0"),
        ({"n_layer": -1}, "n_layer=-1"),
        ({"n_kv_head": 3}, "n_kv_head=3"),
        ({"d_model": 30}, "d_model=30"),
        ({"mlp": "tanh"}, "mlp='tanh'"),
        ({"norm": "batchnorm"}, "norm='batchnorm'"),
        ({"norm_placement": "middle"}, "norm_placement='middle'"),
        ({"positions": "alibi"}, "positions='alibi'"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"norm_eps": 0.0}, "norm_eps=0.0"),
        ({"logit_softcap": -1.0}, "logit_softcap=-1.0"),
        ({"attention": "flash"}, "attention='flash'"),
        ({"attention": ("softmax",)}, "n_layer=2"),
        ({"attention": "sliding"}, "sliding_window"),
        ({"attention_options": {"nope": 1}}, "nope"),
        ({"attention_options": {"kernel": "cuda"}}, "kernel"),
        ({"attention_options": {"linformer_k": 0}}, "linformer_k"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "positions='rope'"),
        ({"positions": "rope", "rope_scaling": {"type": "weird", "factor": 2.0}}, "weird"),
        ({"positions": "rope", "rope_scaling": {"type": "linear", "factor": 0.5}}, "factor"),
        (
            {"positions": "rope", "rope_scaling": {"type": "linear", "factor": 2.0, "beta_fast": 3}},
            "beta_fast",
        ),
        ({"positions": "rope", "rope_scaling": {"type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"positions": "rope", "head_dim": 7}, "even"),
    ],
)
def test_invalid_values_name_the_field(changes: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        ModelConfig(**{**BASE, **changes})
    assert needle in str(err.value)


def test_json_round_trip_and_unknown_key() -> None:
    c = ModelConfig(
        **BASE,
        n_kv_head=2,
        positions="rope",
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        attention=("softmax", "retnet"),
        attention_options={"retnet_chunk": 8},
        logit_softcap=30.0,
    )
    back = ModelConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c
    assert back.attention == ("softmax", "retnet")
    with pytest.raises(ValueError, match="unknown model config keys \\['n_layers'\\]"):
        ModelConfig.from_dict({**c.to_dict(), "n_layers": 3})


def test_frozen_and_replace() -> None:
    c = ModelConfig(**BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_layer = 3  # type: ignore[misc]
    assert c.replace(n_layer=3).n_layer == 3
    with pytest.raises(ValueError, match="n_layer=0"):
        c.replace(n_layer=0)


def test_registries_match_accepted_names() -> None:
    assert set(NORMS) == set(NORM_KINDS)
    assert set(MLPS) == set(MLP_KINDS)
    assert set(POSITIONS) == set(POSITION_KINDS)
    assert set(ATTENTION) == set(ATTENTION_KINDS)
    assert set(ROPE_SCALING_TYPES) <= set(ROPE_INV_FREQ)


def test_layer_attention_per_layer() -> None:
    c = ModelConfig(**BASE, attention=["linear", "sliding"], sliding_window=4)
    assert [c.layer_attention(i) for i in range(2)] == ["linear", "sliding"]
