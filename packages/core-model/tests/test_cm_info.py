"""info: parameter breakdown, FLOPs per token and memory estimates, checked against hand counts."""

import pytest
import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.info import count_parameters, flops_per_token, memory_estimate
from nanoforge.core_model.model import PRESETS, build_model

C = ModelConfig(
    vocab_size=97,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    d_model=32,
    max_seq_len=64,
    mlp="swiglu",
    norm="rmsnorm",
    positions="rope",
    tie_embeddings=False,
)


def test_parameter_breakdown_by_hand() -> None:
    counts = count_parameters(C)
    d, hd, L, V, m = 32, 8, 2, 97, 128
    assert counts["embedding"] == V * d
    assert counts["attention"] == L * (d * 4 * hd + 2 * d * 2 * hd + 4 * hd * d)
    assert counts["mlp"] == L * 3 * d * m
    assert counts["norms"] == (2 * L + 1) * d
    assert counts["head"] == V * d
    model = build_model(C)
    assert counts == count_parameters(model)
    assert counts["total"] == model.num_parameters() == sum(v for k, v in counts.items() if k != "total")


def test_tied_head_counts_once_and_gpt2_size() -> None:
    assert count_parameters(C.replace(tie_embeddings=True))["head"] == 0
    assert 124.0e6 < count_parameters(PRESETS["gpt2-small"])["total"] < 124.6e6  # GPT-2 small, vocab 50304


def test_flops_per_token() -> None:
    f = flops_per_token(C, 16)
    counts = count_parameters(C)
    n = counts["total"] - counts["embedding"]
    assert f["matmul_params"] == n
    d_attn = 32
    assert f["attention_forward"] == 2 * 4 * d_attn * (16 + 1) / 2
    assert f["forward"] == 2 * n + f["attention_forward"]
    assert f["training"] == 6 * n + 3 * f["attention_forward"]
    assert f["decode"] == 2 * n + 2 * 4 * d_attn * 16
    longer = flops_per_token(C, 1024)
    assert longer["attention_forward"] > 50 * f["attention_forward"]  # softmax grows with context
    lin = C.replace(attention="linear")
    assert flops_per_token(lin, 1024)["attention_forward"] == flops_per_token(lin, 16)["attention_forward"]
    slid = C.replace(attention="sliding", sliding_window=8)
    assert flops_per_token(slid, 1024)["decode"] == flops_per_token(slid, 8)["decode"]
    with pytest.raises(ValueError, match="seq_len=0"):
        flops_per_token(C, 0)


def test_memory_estimate() -> None:
    mem = memory_estimate(C, batch=3, seq_len=10)
    assert mem["weights_bytes"] == count_parameters(C)["total"] * 4
    assert mem["decode_state_bytes"] == 2 * (2 * 3 * 2 * 10 * 8 * 4)  # layers * (k+v) * B * nkv * T * hd * 4
    model = build_model(C)
    state = model.new_state(3, 10)
    assert mem["decode_state_bytes"] == sum(
        t.numel() * t.element_size() for layer in state.layers for t in layer.values()
    )
    half = memory_estimate(C, batch=3, seq_len=10, dtype="bfloat16")
    assert half["weights_bytes"] * 2 == mem["weights_bytes"] and half["dtype"] == "bfloat16"
    assert (
        memory_estimate(C, 1, 100)["training_activations_bytes_rough"]
        > mem["training_activations_bytes_rough"] / 3
    )
    for kind in ("sliding", "linear", "performer", "linformer", "retnet"):
        cfg = C.replace(attention=kind, sliding_window=4)
        state = build_model(cfg).new_state(3, 10)
        actual = sum(t.numel() * t.element_size() for layer in state.layers for t in layer.values())
        assert memory_estimate(cfg, 3, 10)["decode_state_bytes"] == actual, kind
    with pytest.raises(ValueError, match="dtype='int8' is not supported"):
        memory_estimate(C, 1, 1, dtype="int8")
    assert memory_estimate(C, 1, 1, dtype=torch.float16)["dtype"] == "float16"
