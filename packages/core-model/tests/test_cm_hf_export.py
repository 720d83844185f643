"""Export our GPT to HF Llama / Mistral / GPT-2 dirs and check that transformers loads them and computes
the same logits; knobs HF cannot represent must fail with a ValueError naming the knob."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nanoforge.core_model.config import ModelConfig  # noqa: E402
from nanoforge.core_model.hf import export_hf, load_hf_dir  # noqa: E402
from nanoforge.core_model.model import build_model  # noqa: E402

torch.set_num_threads(2)

LLAMA_LIKE = dict(
    vocab_size=128,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    d_model=64,
    d_mlp=96,
    mlp="swiglu",
    norm="rmsnorm",
    norm_eps=1e-6,
    positions="rope",
    max_seq_len=64,
    tie_embeddings=False,
    init_std=0.1,
)
GPT2_LIKE = dict(
    vocab_size=128,
    n_layer=2,
    n_head=4,
    d_model=64,
    mlp="gelu_tanh",
    norm="layernorm",
    positions="learned",
    max_seq_len=64,
    tie_embeddings=True,
    qkv_bias=True,
    out_bias=True,
    mlp_bias=True,
    norm_bias=True,
    init_std=0.1,
)


def random_model(**fields) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(**fields)).eval()
    with torch.no_grad():  # biases/norm weights start at 0/1; make every tensor matter
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def hf_logit_diff(ours, out_dir: Path, T: int = 24) -> float:
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation="eager").eval()
    ids = torch.randint(0, 128, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(ids) - hf_model(ids).logits).abs().max().item()


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"tie_embeddings": True, "n_kv_head": None},
        {"qkv_bias": True},  # Qwen2-style: exported with zero o_proj bias
        {"qkv_bias": True, "out_bias": True, "mlp_bias": True, "head_dim": 24},
        {
            "rope_theta": 500.0,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        },
        {
            "rope_theta": 500.0,
            "rope_scaling": {
                "type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    ],
    ids=["gqa", "tied_mha", "qkv_bias", "all_bias_head_dim", "yarn", "llama3"],
)
def test_export_llama_loads_in_transformers(tmp_path: Path, extra: dict) -> None:
    ours = random_model(**{**LLAMA_LIKE, **extra})
    export_hf(ours, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llama"
    assert hf_logit_diff(ours, tmp_path / "out", T=40) < 1e-4


def test_export_sliding_as_mistral(tmp_path: Path) -> None:
    ours = random_model(**LLAMA_LIKE, attention="sliding", sliding_window=4)
    export_hf(ours, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "mistral"
    assert hf_logit_diff(ours, tmp_path / "out") < 1e-4


@pytest.mark.parametrize("mlp", ["gelu_tanh", "gelu"])
def test_export_gpt2_loads_in_transformers(tmp_path: Path, mlp: str) -> None:
    ours = random_model(**{**GPT2_LIKE, "mlp": mlp})
    export_hf(ours, tmp_path / "out")  # arch picked from the config's shape
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "gpt2"
    assert hf_logit_diff(ours, tmp_path / "out") < 1e-4


def test_round_trip_is_exact(tmp_path: Path) -> None:
    ours = random_model(**LLAMA_LIKE, qkv_bias=True)
    export_hf(ours, tmp_path / "out")
    back = load_hf_dir(tmp_path / "out")
    assert back.config.qkv_bias and back.config.out_bias  # Llama's one switch: o_proj bias exported as zeros
    ids = torch.randint(0, 128, (1, 16))
    with torch.no_grad():
        assert torch.equal(back(ids), ours(ids))


@pytest.mark.parametrize(
    ("extra", "arch", "knob"),
    [
        ({"attention": "linear"}, "llama", "attention"),
        ({"norm_placement": "post"}, "llama", "norm_placement"),
        ({"qk_norm": True}, "llama", "qk_norm"),
        ({"logit_softcap": 30.0}, "llama", "logit_softcap"),
        ({}, "gpt2", "norm"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "nope", "arch"),
    ],
)
def test_unrepresentable_knob_is_named(tmp_path: Path, extra: dict, arch: str, knob: str) -> None:
    ours = random_model(**{**LLAMA_LIKE, **extra})
    with pytest.raises(ValueError, match=knob):
        export_hf(ours, tmp_path / "out", arch=arch)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_gpt2_export_refuses_gqa(tmp_path: Path) -> None:
    ours = random_model(**{**GPT2_LIKE, "n_kv_head": 2})
    with pytest.raises(ValueError, match="n_kv_head=2"):
        export_hf(ours, tmp_path / "out", arch="gpt2")
