"""Norms, MLPs, positions and RoPE scaling (against transformers' own formulas)."""

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.layers import (
    MLPS,
    NORMS,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositions,
    SwiGLU,
    apply_rope,
)

BASE = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=64)


def test_rmsnorm_formula() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 8)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_layernorm_bias_knob() -> None:
    assert NORMS["layernorm"](8, 1e-5, True).bias is not None
    assert NORMS["layernorm"](8, 1e-5, False).bias is None
    assert not hasattr(NORMS["rmsnorm"](8, 1e-5, True), "bias")


@pytest.mark.parametrize("kind", ["gelu", "gelu_tanh", "relu", "swiglu"])
def test_mlp_kinds(kind: str) -> None:
    torch.manual_seed(0)
    c = ModelConfig(**BASE, mlp=kind, mlp_bias=True)
    mlp = MLPS[kind](c)
    x = torch.randn(2, 5, 32)
    assert mlp(x).shape == (2, 5, 32)
    assert mlp.up_proj.weight.shape == (c.mlp_width, 32) and mlp.up_proj.bias is not None
    assert isinstance(mlp, SwiGLU) == (kind == "swiglu")
    if kind == "swiglu":
        expected = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        torch.testing.assert_close(mlp(x), expected)


def test_gelu_variants_differ() -> None:
    torch.manual_seed(0)
    a = MLPS["gelu"](ModelConfig(**BASE))
    b = MLPS["gelu_tanh"](ModelConfig(**BASE))
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 32) * 3
    diff = (a(x) - b(x)).abs().max().item()
    assert 0 < diff < 1e-2  # the tanh approximation is close but not identical


def test_rope_is_relative() -> None:
    """q.k after RoPE depends only on the position difference, and rotation keeps norms."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(ModelConfig(**BASE, positions="rope"))
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq: int, pk: int) -> float:
        cq, sq = rope(torch.tensor([[pq]]))
        ck, sk = rope(torch.tensor([[pk]]))
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert math.isclose(score(5, 2), score(13, 10), rel_tol=1e-5)
    assert not math.isclose(score(5, 2), score(5, 4), rel_tol=1e-3)
    c, s = rope(torch.tensor([[7]]))
    torch.testing.assert_close(apply_rope(q, c, s).norm(), q.norm())


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 16,
            "beta_fast": 16,
            "beta_slow": 2,
        },
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
        },
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ],
)
@pytest.mark.parametrize("cur_len", [32, 100])
def test_rope_scaling_matches_transformers(scaling: dict, cur_len: int) -> None:
    hf_cfg = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        max_position_embeddings=32,
        rope_parameters={**scaling, "rope_theta": 500.0},
    )
    hf_inv, hf_attn = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf_cfg, "cpu", seq_len=cur_len)
    ours_scaling = {("type" if k == "rope_type" else k): v for k, v in scaling.items()}
    if ours_scaling["type"] == "dynamic":
        ours_scaling["type"] = "ntk"
    cfg = ModelConfig(
        **{**BASE, "d_model": 64, "max_seq_len": 32},
        positions="rope",
        rope_theta=500.0,
        rope_scaling=ours_scaling,
    )
    rope = RotaryEmbedding(cfg)
    inv, attn = rope.rule(rope.dim, rope.theta, rope.scaling, rope.max_len, cur_len)
    torch.testing.assert_close(inv, hf_inv.float(), rtol=1e-6, atol=0)
    assert math.isclose(attn, hf_attn, rel_tol=1e-9)
    # The forward applies the attention factor to cos/sin (YaRN) and the dynamic rule past max_seq_len.
    pos = torch.arange(cur_len)[None]
    cos, _ = rope(pos)
    ang = pos[0, -1].float() * hf_inv[0]
    torch.testing.assert_close(cos[0, -1, 0], torch.cos(ang) * hf_attn, rtol=1e-5, atol=1e-6)


def test_sinusoidal_positions() -> None:
    enc = SinusoidalPositions(ModelConfig(**BASE, positions="sinusoidal"))
    out = enc(torch.tensor([[0, 3]]))
    assert out.shape == (1, 2, 32)
    torch.testing.assert_close(out[0, 0, 0::2], torch.zeros(16))
    torch.testing.assert_close(out[0, 0, 1::2], torch.ones(16))
    torch.testing.assert_close(out[0, 1, 0], torch.sin(torch.tensor(3.0)))
