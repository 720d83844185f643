"""Parity of the HF Llama importer against transformers on tiny random models built locally (no download).

Covers: logits within 1e-4 (fp32) for MHA/GQA, attention+MLP biases, explicit head_dim, tied embeddings,
every RoPE scaling type (linear, dynamic NTK past max_position_embeddings, YaRN, Llama-3), sharded and
unsharded safetensors, a tensor-only .bin, the in-memory ``from_hf_model`` path, greedy generation token
for token, and the one-line errors for unknown architectures, corrupt files and mismatched shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nanoforge.core_model.generate import generate  # noqa: E402
from nanoforge.core_model.hf import build_from_state, from_hf_model, load_hf_dir  # noqa: E402

torch.set_num_threads(2)

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.1,
)


def make_llama(tmp_path: Path, seed: int = 0, shard: str | None = None, **overrides):
    """A random tiny LlamaForCausalLM, saved to ``tmp_path/hf``; returns (hf_model, dir)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**{**TINY, **overrides}, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).eval()
    out = tmp_path / "hf"
    model.save_pretrained(out, max_shard_size=shard) if shard else model.save_pretrained(out)
    return model, out


def assert_logits_match(hf_model, ours, T: int = 24, seed: int = 1, atol: float = 1e-4) -> None:
    ids = torch.randint(0, hf_model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    err = (got - expected).abs().max().item()
    assert err < atol, f"max |logit diff| = {err:.2e}"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_key_value_heads": 4},  # MHA
        {"num_key_value_heads": 1},  # MQA
        {"attention_bias": True, "mlp_bias": True},
        {"head_dim": 24},  # head_dim != hidden/heads, as HF allows
        {"tie_word_embeddings": True},
    ],
    ids=["gqa", "mha", "mqa", "bias", "head_dim", "tied"],
)
def test_llama_logits_match_transformers(tmp_path: Path, overrides: dict) -> None:
    hf_model, path = make_llama(tmp_path, **overrides)
    ours = load_hf_dir(path)
    assert ours.config.n_kv_head in (None, overrides.get("num_key_value_heads", 2))
    assert_logits_match(hf_model, ours)


ROPE_CASES = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn_knobs": {
        "rope_type": "yarn",
        "factor": 3.0,
        "original_max_position_embeddings": 16,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "attention_factor": 1.3,
    },
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
}


@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_llama_rope_scaling_logits_match(tmp_path: Path, name: str) -> None:
    params = {**ROPE_CASES[name], "rope_theta": 500.0}  # small theta so the scaled bands matter at T=48
    hf_model, path = make_llama(tmp_path, rope_parameters=params)
    ours = load_hf_dir(path)
    assert ours.config.rope_scaling is not None and ours.config.rope_theta == 500.0
    assert_logits_match(hf_model, ours, T=48)
    assert_scaling_matters(hf_model, ours, T=48)


def assert_scaling_matters(hf_model, ours, T: int) -> None:
    """The same weights without rope_scaling must give different logits, else the parity proves nothing."""
    plain = build_from_state(ours.config.replace(rope_scaling=None), ours.state_dict())
    ids = torch.randint(0, 128, (1, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (plain(ids) - hf_model(ids).logits).abs().max().item() > 1e-3


def test_llama_dynamic_ntk_beyond_max_positions(tmp_path: Path) -> None:
    """HF "dynamic" grows the base once the sequence exceeds max_position_embeddings (16 here, T=40)."""
    params = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 500.0}
    hf_model, path = make_llama(tmp_path, rope_parameters=params, max_position_embeddings=16)
    ours = load_hf_dir(path)
    assert ours.config.rope_scaling["type"] == "ntk"
    assert_logits_match(hf_model, ours, T=40)
    assert_scaling_matters(hf_model, ours, T=40)


def test_old_style_rope_config_keys(tmp_path: Path) -> None:
    """transformers < 5 wrote top-level rope_theta + rope_scaling {"type": ...}; both must still load."""
    hf_model, path = make_llama(
        tmp_path, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
    )
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg.update(rope_theta=500.0, rope_scaling={"type": "linear", "factor": 2.0})
    (path / "config.json").write_text(json.dumps(cfg))
    ours = load_hf_dir(path)
    assert ours.config.rope_scaling == {"type": "linear", "factor": 2.0}
    assert_logits_match(hf_model, ours)


def test_sharded_checkpoint(tmp_path: Path) -> None:
    hf_model, path = make_llama(tmp_path, shard="20KB")
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (path / "model.safetensors.index.json").is_file()
    assert_logits_match(hf_model, load_hf_dir(path))


def test_in_memory_from_hf_model() -> None:
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval()
    assert_logits_match(hf_model, from_hf_model(hf_model))


def test_bin_checkpoint_read_with_weights_only(tmp_path: Path) -> None:
    hf_model, path = make_llama(tmp_path)
    (path / "model.safetensors").unlink()
    torch.save(dict(hf_model.state_dict()), path / "pytorch_model.bin")
    assert_logits_match(hf_model, load_hf_dir(path))


def test_bin_with_pickled_object_is_refused(tmp_path: Path) -> None:
    _, path = make_llama(tmp_path)
    (path / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1), "evil": Path("/etc/passwd")}, path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_hf_dir(path)


def test_greedy_generation_matches_transformers(tmp_path: Path) -> None:
    hf_model, path = make_llama(
        tmp_path, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
    )
    ours = load_hf_dir(path)
    prompt = [5, 17, 99, 3, 64, 12]
    with torch.no_grad():
        hf_out = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    expected = hf_out[0, len(prompt) :].tolist()
    got = generate(ours, [prompt], max_new_tokens=32, temperature=0.0)[0]
    assert len(expected) == 32 and len(set(expected)) > 4  # a real continuation, not one repeated token
    assert got == expected


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_architecture_lists_supported(tmp_path: Path) -> None:
    _, path = make_llama(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "bert"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unsupported HF architecture 'bert'.*llama, mistral, qwen2, gpt2"):
        load_hf_dir(path)


def test_missing_weights(tmp_path: Path) -> None:
    _, path = make_llama(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_hf_dir(path)


def test_missing_shard(tmp_path: Path) -> None:
    _, path = make_llama(tmp_path, shard="20KB")
    sorted(path.glob("model-*.safetensors"))[1].unlink()
    with pytest.raises(FileNotFoundError, match=r"shard .* is missing"):
        load_hf_dir(path)


def test_corrupt_safetensors(tmp_path: Path) -> None:
    _, path = make_llama(tmp_path)
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_hf_dir(path)


def test_shape_mismatch_names_tensor(tmp_path: Path) -> None:
    _, path = make_llama(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"shape mismatch for blocks\.0\.mlp\.\w+_proj\.weight"):
        load_hf_dir(path)


def test_unsupported_rope_type(tmp_path: Path) -> None:
    _, path = make_llama(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 1e4, "factor": 2.0}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported rope type 'longrope'"):
        load_hf_dir(path)
