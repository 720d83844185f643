"""Cross-package, end to end through the real `nanoforge` command: tokenizer -> model dir -> generation.

Each step is a subprocess of the installed console script, as a user would run it. The model has random
weights (no training), which is enough to check that the pieces fit: ids in, ids out, text that decodes
from exactly those ids, and the same tokens from our directory and from its Hugging Face export.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanoforge.core_model.checkpoint import save_model
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import build_model
from nanoforge.tokenizer import Tokenizer

NANOFORGE = str(Path(sys.executable).parent / "nanoforge")
CORPUS = (
    "The quick brown fox jumps over the lazy dog. Return the value of x if it is set.\n"
    "This module provides functions for working with paths, files and directories.\n"
    "Naïve café façade — 東京 and emoji 🙂 also appear, so bytes matter.\n"
) * 40


def run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([NANOFORGE, *args], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"nanoforge {' '.join(args)} failed:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    run("tokenizer", "train", "--input", str(corpus), "--vocab-size", "320", "--out", str(root / "tok"))
    tok = Tokenizer.load(root / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_kv_head=2, d_model=64, mlp="swiglu",
        norm="rmsnorm", positions="rope", max_seq_len=128, tie_embeddings=False,
        qkv_bias=False, out_bias=False, mlp_bias=False, norm_bias=False,
    )  # fmt: skip
    out = root / "model"
    save_model(build_model(cfg), out)
    shutil.copytree(root / "tok", out / "tokenizer")
    return out


def test_help_lists_installed_groups() -> None:
    out = run("--help").stdout
    assert "tokenizer" in out and "model" in out


def test_generate_text_round_trip(model_dir: Path) -> None:
    proc = run(
        "model", "generate", "--model", str(model_dir), "--prompt", "Return the",
        "--max-new-tokens", "12", "--temperature", "0", "--json",
    )  # fmt: skip
    result = json.loads(proc.stdout)
    tok = Tokenizer.load(model_dir / "tokenizer")
    assert 1 <= len(result["ids"]) <= 12
    assert all(0 <= i < tok.vocab_size for i in result["ids"])
    assert result["text"] == tok.decode(result["ids"])


def test_prompt_ids_match_prompt_text(model_dir: Path) -> None:
    tok = Tokenizer.load(model_dir / "tokenizer")
    ids = tok.encode("Return the")
    by_text = run(
        "model", "generate", "--model", str(model_dir), "--prompt", "Return the",
        "--max-new-tokens", "8", "--temperature", "0", "--json",
    )  # fmt: skip
    by_ids = run(
        "model", "generate", "--model", str(model_dir), "--prompt-ids", ",".join(map(str, ids)),
        "--max-new-tokens", "8", "--temperature", "0", "--json",
    )  # fmt: skip
    assert json.loads(by_text.stdout)["ids"] == json.loads(by_ids.stdout)["ids"]


def test_hf_export_generates_the_same_tokens(model_dir: Path, tmp_path: Path) -> None:
    hf_dir = tmp_path / "hf"
    run("model", "convert", "--to-hf", str(model_dir), "--out", str(hf_dir), "--arch", "llama")
    # the converter exports our tokenizer in HF's format beside the weights
    from tokenizers import Tokenizer as HFTokenizer

    ours_tok = Tokenizer.load(model_dir / "tokenizer")
    text = "Naïve café — 東京 🙂 Return the value."
    assert HFTokenizer.from_file(str(hf_dir / "tokenizer.json")).encode(text).ids == ours_tok.encode(text)
    # exporting again into the same directory needs --force
    export = ("tokenizer", "export", "--tokenizer", str(model_dir / "tokenizer"), "--format", "hf")
    again = subprocess.run(
        [NANOFORGE, *export, "--out", str(hf_dir)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 1 and "--force" in again.stderr
    run(*export, "--out", str(hf_dir), "--force")
    args = ("--prompt", "quick brown", "--max-new-tokens", "10", "--temperature", "0", "--json")
    ours = json.loads(run("model", "generate", "--model", str(model_dir), *args).stdout)
    theirs = json.loads(run("model", "generate", "--model", str(hf_dir), *args).stdout)
    assert ours["ids"] == theirs["ids"]
    assert ours["text"] == theirs["text"]


def test_bad_input_is_one_line(model_dir: Path) -> None:
    proc = subprocess.run(
        [NANOFORGE, "model", "generate", "--model", str(model_dir), "--prompt-ids", "1,2", "--top-p", "1.5"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "top" in proc.stderr.lower()
