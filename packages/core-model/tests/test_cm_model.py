"""GPT: every config knob builds the right modules and runs; limits, dropout, softcap, mixed precision,
and a few optimisation steps actually reduce the loss for every attention variant."""

import pytest
import torch
import torch.nn.functional as F

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.layers import RMSNorm, SwiGLU
from nanoforge.core_model.model import GPT, PRESETS, build_model

BASE = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=32)


def build(**kw: object) -> GPT:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**BASE, **kw}))  # type: ignore[arg-type]


KNOBS = [
    {},
    {"n_kv_head": 1},
    {"n_kv_head": 2, "positions": "rope"},
    {"head_dim": 16},
    {"d_mlp": 40, "mlp": "relu"},
    {"mlp": "swiglu", "norm": "rmsnorm", "positions": "rope", "tie_embeddings": False},
    {"mlp": "gelu_tanh", "norm_bias": False},
    {"norm_placement": "post"},
    {"positions": "sinusoidal"},
    {"positions": "none"},
    {"positions": "rope", "rope_scaling": {"type": "linear", "factor": 2.0}},
    {"positions": "rope", "rope_scaling": {"type": "ntk", "factor": 2.0}},
    {
        "positions": "rope",
        "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16},
    },
    {
        "positions": "rope",
        "rope_scaling": {
            "type": "llama3",
            "factor": 2.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    },
    {"qkv_bias": True, "out_bias": True, "mlp_bias": True},
    {"qk_norm": True, "positions": "rope"},
    {"logit_softcap": 5.0},
    {"dropout": 0.1},
    {"attention": ("sliding", "linear"), "sliding_window": 3},
    {"attention": ("performer", "linformer")},
    {"attention": "retnet", "positions": "rope"},
]


@pytest.mark.parametrize(
    "knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default"
)
def test_every_knob_builds_and_runs(knobs: dict) -> None:
    model = build(**knobs).eval()
    c = model.config
    x = torch.randint(0, 97, (2, 9))
    logits = model(x)
    assert logits.shape == (2, 9, 97) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    attn = model.blocks[0].attn
    assert attn.q_proj.weight.shape == (c.n_head * c.head_size, c.d_model)
    assert attn.k_proj.weight.shape == (c.kv_heads * c.head_size, c.d_model)
    assert (attn.q_proj.bias is not None) == c.qkv_bias and (attn.o_proj.bias is not None) == c.out_bias
    assert (model.blocks[0].mlp.up_proj.bias is not None) == c.mlp_bias
    assert isinstance(model.blocks[0].mlp, SwiGLU) == (c.mlp == "swiglu")
    assert model.blocks[0].mlp.up_proj.out_features == c.mlp_width
    assert isinstance(model.norm_f, RMSNorm) == (c.norm == "rmsnorm")
    assert hasattr(model, "pos_emb") == (c.positions == "learned")
    assert (model.rotary is not None) == (c.positions == "rope")
    assert hasattr(attn, "q_norm") == c.qk_norm
    assert (model.lm_head.weight is model.tok_emb.weight) == c.tie_embeddings
    if c.logit_softcap:
        assert logits.abs().max() <= c.logit_softcap


def test_knobs_change_the_function() -> None:
    """Same weights, one knob flipped -> different outputs (the knob is wired, not ignored)."""
    x = torch.randint(0, 97, (1, 8))
    base = build(positions="rope").eval()
    for change in (
        {"norm_placement": "post"},
        {"qk_norm": True},
        {"logit_softcap": 0.5},
        {"rope_scaling": {"type": "linear", "factor": 4.0}},
        {"rope_theta": 100.0},
    ):
        other = build(positions="rope", **change).eval()
        other.load_state_dict(base.state_dict(), strict=False)
        assert (other(x) - base(x)).abs().max() > 1e-4, change


def test_dropout_only_in_training() -> None:
    model = build(dropout=0.5)
    x = torch.randint(0, 97, (1, 8))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_learned_positions_refuse_long_sequences() -> None:
    model = build().eval()
    with pytest.raises(ValueError, match="reaches position 32 but max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    rope = build(positions="rope").eval()
    assert rope(torch.zeros(1, 40, dtype=torch.long)).shape == (1, 40, 97)  # RoPE may extrapolate


def test_input_errors() -> None:
    model = build().eval()
    with pytest.raises(ValueError, match="idx must be a \\(batch, seq\\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="unknown preset 'gpt5'"):
        build_model("gpt5")


def test_last_only_and_positions() -> None:
    model = build(positions="rope").eval()
    x = torch.randint(0, 97, (2, 6))
    torch.testing.assert_close(model(x, last_only=True), model(x)[:, -1:])
    shifted = model(x, positions=torch.arange(3, 9)[None].expand(2, 6))
    torch.testing.assert_close(shifted, model(x))  # RoPE is relative: a common shift changes nothing
    spread = model(x, positions=torch.arange(0, 12, 2)[None].expand(2, 6))
    assert (spread - model(x)).abs().max() > 1e-5  # explicit positions are used


def test_bf16_autocast_close_to_fp32() -> None:
    model = build(mlp="swiglu", norm="rmsnorm", positions="rope", n_kv_head=2).eval()
    x = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("kind", ["softmax", "sliding", "linear", "performer", "linformer", "retnet"])
def test_training_reduces_loss(kind: str) -> None:
    model = build(attention=kind, sliding_window=4, positions="rope", n_kv_head=2)
    model.train()
    x = torch.randint(0, 97, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 97), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_presets_are_valid_configs() -> None:
    assert set(PRESETS) >= {"gpt2-small", "llama-tiny", "shakespeare-char"}
    assert PRESETS["llama-tiny"].kv_heads == 2 and PRESETS["gpt2-small"].tie_embeddings
    model = build_model("shakespeare-char")
    assert 10e6 < model.num_parameters() < 11e6  # nanoGPT's shakespeare-char is ~10.7M
