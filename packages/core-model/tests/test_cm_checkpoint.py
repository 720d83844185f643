"""Checkpoint directories: round trip, tied weights saved once, atomic files, and every failure mode."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nanoforge.core_model.checkpoint import load_model, read_generation_config, save_model
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import GPT, build_model


def tiny(**kw: object) -> GPT:
    torch.manual_seed(0)
    args = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=32)
    args.update(kw)
    return build_model(ModelConfig(**args)).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip(tmp_path: Path, tied: bool) -> None:
    model = tiny(tie_embeddings=tied, attention=("performer", "retnet"), positions="rope")
    save_model(model, tmp_path, generation_config={"temperature": 0.7})
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["format"] == "nanoforge-model" and meta["version"] == 1
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert ("lm_head.weight" in keys) == (not tied)  # tied weights are stored once
    loaded = load_model(tmp_path)
    x = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) == tied
    assert read_generation_config(tmp_path) == {"temperature": 0.7}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]


def test_overwrite_and_dtype(tmp_path: Path) -> None:
    save_model(tiny(), tmp_path)
    save_model(tiny(n_layer=1), tmp_path)
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    assert loaded.config.n_layer == 1 and loaded.tok_emb.weight.dtype == torch.bfloat16


def _edit_config(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    meta = json.loads((path / "config.json").read_text())
    fn(meta)
    (path / "config.json").write_text(json.dumps(meta))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config\.json: not found"):
        load_model(tmp_path)
    save_model(tiny(), tmp_path)

    _edit_config(tmp_path, lambda m: m.update(format="hf-llama"))
    with pytest.raises(ValueError, match=r"format 'hf-llama' is not 'nanoforge-model'"):
        load_model(tmp_path)
    _edit_config(tmp_path, lambda m: m.update(format="nanoforge-model", version=2))
    with pytest.raises(ValueError, match=r"version 2 is not supported; accepted: 1"):
        load_model(tmp_path)
    _edit_config(tmp_path, lambda m: (m.update(version=1), m["config"].update(n_layers=3)))
    with pytest.raises(ValueError, match=r"config\.json: unknown model config keys \['n_layers'\]"):
        load_model(tmp_path)
    _edit_config(tmp_path, lambda m: (m["config"].pop("n_layers"), m["config"].update(d_model=64)))
    with pytest.raises(
        ValueError, match=r"model\.safetensors: tensor '[a-z_.0-9]+' has shape .* but the config needs"
    ):
        load_model(tmp_path)
    _edit_config(tmp_path, lambda m: m["config"].update(d_model=32, qkv_bias=True))
    with pytest.raises(
        ValueError, match=r"model\.safetensors: missing tensors \['blocks.0.attn.k_proj.bias'"
    ):
        load_model(tmp_path)
    _edit_config(tmp_path, lambda m: m["config"].update(qkv_bias=False))

    tensors = load_file(tmp_path / "model.safetensors")
    save_file({**tensors, "extra.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected tensors \['extra.weight'\]"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt safetensors file"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors: weights file not found"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_model(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_model(tiny(), tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("nanoforge.core_model.checkpoint.os.replace", boom)
    with pytest.raises(OSError, match=r"disk full"):
        save_model(tiny(n_layer=1), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    from nanoforge.core_model.checkpoint import atomic_write_bytes

    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
