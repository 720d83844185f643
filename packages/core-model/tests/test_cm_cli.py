"""The ``nanoforge model`` CLI: generate (ids, text, JSON, streaming), convert both ways, info, and one-line
errors for bad input — through click's CliRunner, plus one real subprocess of the installed command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nanoforge.core_model.checkpoint import load_model, save_model
from nanoforge.core_model.cli import group
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.generate import generate
from nanoforge.core_model.hf import load_any_model
from nanoforge.core_model.model import build_model

torch.set_num_threads(2)

LLAMA_LIKE = dict(
    vocab_size=256,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    d_model=64,
    d_mlp=96,
    mlp="swiglu",
    norm="rmsnorm",
    positions="rope",
    max_seq_len=64,
    tie_embeddings=False,
    init_std=0.3,
)


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)


def save_native(path: Path, **overrides) -> Path:
    torch.manual_seed(0)
    save_model(build_model(ModelConfig(**{**LLAMA_LIKE, **overrides})), path)
    return path


@pytest.fixture
def native_dir(tmp_path: Path) -> Path:
    return save_native(tmp_path / "ours")


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.1,
        bos_token_id=None,
        eos_token_id=None,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def json_out(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------- generate


def test_generate_ids_json_matches_library(native_dir: Path) -> None:
    out = json_out(
        run(
            "generate",
            "--model",
            native_dir,
            "--prompt-ids",
            "1,2,3",
            "--max-new-tokens",
            8,
            "--temperature",
            0,
            "--json",
        )
    )
    expected = generate(load_model(native_dir), [[1, 2, 3]], max_new_tokens=8, temperature=0.0)[0]
    assert out == {"ids": expected, "text": None}
    assert len(expected) == 8


def test_generate_streams_ids_without_json(native_dir: Path) -> None:
    args = (
        "generate",
        "--model",
        native_dir,
        "--prompt-ids",
        "5, 6",
        "--max-new-tokens",
        6,
        "--temperature",
        0,
    )
    streamed = run(*args)
    assert streamed.exit_code == 0
    assert [int(t) for t in streamed.stdout.split()] == json_out(run(*args, "--json"))["ids"]


def test_seeded_sampling_is_reproducible(native_dir: Path) -> None:
    def sample(seed: int) -> list[int]:
        return json_out(
            run(
                "generate",
                "--model",
                native_dir,
                "--prompt-ids",
                "1",
                "--max-new-tokens",
                16,
                "--temperature",
                1.5,
                "--top-k",
                50,
                "--top-p",
                0.95,
                "--seed",
                seed,
                "--json",
            )
        )["ids"]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_generate_on_hf_dir_matches_transformers(hf_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor([[9, 8, 7]]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    out = json_out(
        run(
            "generate",
            "--model",
            hf_dir,
            "--prompt-ids",
            "9,8,7",
            "--max-new-tokens",
            12,
            "--temperature",
            0,
            "--json",
        )
    )
    assert out["ids"] == ref[0, 3:].tolist()


def test_stop_token_from_generation_config(native_dir: Path) -> None:
    first = json_out(
        run(
            "generate",
            "--model",
            native_dir,
            "--prompt-ids",
            "1,2",
            "--max-new-tokens",
            8,
            "--temperature",
            0,
            "--json",
        )
    )["ids"]
    (native_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": first[2]}))
    stopped = json_out(
        run(
            "generate",
            "--model",
            native_dir,
            "--prompt-ids",
            "1,2",
            "--max-new-tokens",
            8,
            "--temperature",
            0,
            "--json",
        )
    )["ids"]
    assert stopped == first[: first.index(first[2]) + 1]


def test_text_in_and_out_with_native_tokenizer(native_dir: Path) -> None:
    tok_mod = pytest.importorskip("nanoforge.tokenizer")
    from nanoforge.tokenizer.io import save_tokenizer

    tok = tok_mod.Tokenizer([])  # byte-level, 256 ids: matches the model's vocab
    save_tokenizer(tok, native_dir / "tokenizer")
    out = json_out(
        run(
            "generate",
            "--model",
            native_dir,
            "--prompt",
            "héllo",
            "--max-new-tokens",
            10,
            "--temperature",
            0,
            "--json",
        )
    )
    expected = generate(load_model(native_dir), [tok.encode("héllo")], max_new_tokens=10, temperature=0.0)[0]
    assert out == {"ids": expected, "text": tok.decode(expected)}
    streamed = run(
        "generate", "--model", native_dir, "--prompt", "héllo", "--max-new-tokens", 10, "--temperature", 0
    )
    assert streamed.exit_code == 0 and streamed.stdout == tok.decode(expected) + "\n"


def test_stop_token_is_kept_in_ids_but_not_printed(native_dir: Path) -> None:
    tok_mod = pytest.importorskip("nanoforge.tokenizer")
    from nanoforge.tokenizer.io import save_tokenizer

    tok = tok_mod.Tokenizer([])  # byte-level, 256 ids: matches the model's vocab
    save_tokenizer(tok, native_dir / "tokenizer")
    args = [
        "generate",
        "--model",
        native_dir,
        "--prompt",
        "héllo",
        "--max-new-tokens",
        10,
        "--temperature",
        0,
    ]
    free = json_out(run(*args, "--json"))["ids"]
    eos = free[3]
    (native_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    out = json_out(run(*args, "--json"))
    kept = free[: free.index(eos) + 1]
    assert out["ids"] == kept and out["ids"][-1] == eos
    assert out["text"] == tok.decode(kept[:-1])
    streamed = run(*args)
    assert streamed.exit_code == 0 and streamed.stdout == tok.decode(kept[:-1]) + "\n"


def test_text_with_hf_tokenizer_json(hf_dir: Path) -> None:
    pytest.importorskip("nanoforge.tokenizer.hf")
    tokenizers = pytest.importorskip("tokenizers")
    # A byte-level BPE with exactly the 256 byte tokens (no merges), so its ids fit the model's vocab.
    hf_tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf_tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = tokenizers.decoders.ByteLevel()
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=256, initial_alphabet=alphabet, show_progress=False)
    hf_tok.train_from_iterator(["abc abc"], trainer)
    assert hf_tok.get_vocab_size() == 256
    hf_tok.save(str(hf_dir / "tokenizer.json"))
    prompt_ids = ",".join(str(i) for i in hf_tok.encode("abc").ids)
    out = json_out(
        run(
            "generate",
            "--model",
            hf_dir,
            "--prompt",
            "abc",
            "--max-new-tokens",
            5,
            "--temperature",
            0,
            "--json",
        )
    )
    ids_out = json_out(
        run(
            "generate",
            "--model",
            hf_dir,
            "--prompt-ids",
            prompt_ids,
            "--max-new-tokens",
            5,
            "--temperature",
            0,
            "--json",
        )
    )
    assert out["ids"] == ids_out["ids"] and len(out["ids"]) == 5
    assert out["text"] == ids_out["text"] == hf_tok.decode(out["ids"])


# ----------------------------------------------------------------------------------------- convert, info


def test_convert_from_hf_then_generate_same(hf_dir: Path, tmp_path: Path) -> None:
    (hf_dir / "tokenizer.json").write_text("{}")  # copied along untouched
    result = run("convert", "--from-hf", hf_dir, "--out", tmp_path / "ours")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ours" / "tokenizer.json").read_text() == "{}"
    (hf_dir / "tokenizer.json").unlink()
    (tmp_path / "ours" / "tokenizer.json").unlink()
    args = ("--prompt-ids", "4,5,6", "--max-new-tokens", 10, "--temperature", 0, "--json")
    assert json_out(run("generate", "--model", tmp_path / "ours", *args)) == json_out(
        run("generate", "--model", hf_dir, *args)
    )


def test_convert_to_hf_loads_in_transformers(native_dir: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    result = run("convert", "--to-hf", native_dir, "--out", tmp_path / "hf_out", "--arch", "llama")
    assert result.exit_code == 0, result.output
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf_out").eval()
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        diff = (hf_model(ids).logits - load_model(native_dir)(ids)).abs().max().item()
    assert diff < 1e-4


def test_convert_to_hf_exports_native_tokenizer(native_dir: Path, tmp_path: Path) -> None:
    tok_mod = pytest.importorskip("nanoforge.tokenizer")
    pytest.importorskip("nanoforge.tokenizer.hf_export")
    tokenizers = pytest.importorskip("tokenizers")
    from nanoforge.tokenizer.io import save_tokenizer

    tok = tok_mod.Tokenizer([])
    save_tokenizer(tok, native_dir / "tokenizer")
    result = run("convert", "--to-hf", native_dir, "--out", tmp_path / "hf_out")
    assert result.exit_code == 0, result.output
    hf_tok = tokenizers.Tokenizer.from_file(str(tmp_path / "hf_out" / "tokenizer.json"))
    assert hf_tok.encode("héllo wörld").ids == tok.encode("héllo wörld")


def test_convert_to_hf_unrepresentable_knob(tmp_path: Path) -> None:
    ours = save_native(tmp_path / "lin", attention="linear")
    assert_one_line_error(run("convert", "--to-hf", ours, "--out", tmp_path / "x"), "attention='linear'")


def test_info_json_counts_parameters(native_dir: Path, hf_dir: Path) -> None:
    info = pytest.importorskip("nanoforge.core_model.info")
    for model_dir in (native_dir, hf_dir):
        report = json_out(run("info", model_dir, "--seq-len", 32, "--json"))
        config = ModelConfig.from_dict(report["config"])
        assert report["parameters"] == json.loads(json.dumps(info.count_parameters(config)))
        assert report["flops_per_token"] == json.loads(json.dumps(info.flops_per_token(config, 32)))
        total = report["parameters"]["total"]
        assert total == load_any_model(model_dir).num_parameters()
    text = run("info", native_dir)
    assert text.exit_code == 0 and "parameters" in text.stdout


# ------------------------------------------------------------------------------------------------ errors


def _corrupt(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")


def _unknown_arch(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "t5", "architectures": ["T5Model"]}))


def _shape(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 32, "head_dim": 8}))


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (_unknown_arch, ["unsupported HF architecture 't5'", "llama, mistral, qwen2, gpt2"]),
        (lambda d: (d / "model.safetensors").unlink(), ["no weights in"]),
        (_corrupt, ["not a readable safetensors file"]),
        (_shape, ["shape mismatch for"]),
    ],
    ids=["unknown_arch", "missing_weights", "corrupt_weights", "shape_mismatch"],
)
def test_bad_hf_dir_is_one_line_error(hf_dir: Path, damage, fragments: list[str]) -> None:  # type: ignore[no-untyped-def]
    damage(hf_dir)
    assert_one_line_error(
        run("generate", "--model", hf_dir, "--prompt-ids", "1", "--max-new-tokens", 2), *fragments
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--prompt-ids", "1", "--temperature", "-1"], "--temperature=-1.0"),
        (["--prompt-ids", "1", "--top-p", "1.5"], "--top-p=1.5"),
        (["--prompt-ids", "1", "--top-k", "-3"], "--top-k=-3"),
        (["--prompt-ids", "1", "--max-new-tokens", "0"], "--max-new-tokens=0"),
        (["--prompt-ids", "1,x"], "comma-separated integers"),
        (["--prompt-ids", "1,999"], "[999]"),
        (["--prompt-ids", "1", "--prompt", "hi"], "exactly one of"),
        ([], "exactly one of"),
        (["--prompt", "hi"], "has no tokenizer"),
    ],
)
def test_bad_generate_arguments(native_dir: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(run("generate", "--model", native_dir, *args), fragment)


def test_sequence_longer_than_model_supports(tmp_path: Path) -> None:
    gpt2_like = save_native(
        tmp_path / "g", mlp="gelu_tanh", norm="layernorm", positions="learned", max_seq_len=16
    )
    result = run(
        "generate", "--model", gpt2_like, "--prompt-ids", ",".join(["1"] * 10), "--max-new-tokens", 10
    )
    assert_one_line_error(result, "max_seq_len=16")


def test_missing_dirs(tmp_path: Path) -> None:
    assert_one_line_error(
        run("generate", "--model", tmp_path / "nope", "--prompt-ids", "1"), "does not exist"
    )
    assert_one_line_error(run("info", tmp_path / "nope"), "does not exist")
    assert_one_line_error(
        run("convert", "--from-hf", tmp_path / "nope", "--out", tmp_path / "o"), "not a directory"
    )
    assert_one_line_error(run("convert", "--out", tmp_path / "o"), "exactly one of")


def test_real_subprocess_of_installed_command(native_dir: Path) -> None:
    exe = shutil.which("nanoforge", path=str(Path(sys.executable).parent))
    if exe is None or "model" not in {ep.name for ep in entry_points(group="nanoforge.cli")}:
        pytest.skip("the nanoforge command with the 'model' entry point is not installed in this environment")
    ok = subprocess.run(
        [
            exe,
            "model",
            "generate",
            "--model",
            str(native_dir),
            "--prompt-ids",
            "1,2",
            "--max-new-tokens",
            "4",
            "--temperature",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["ids"]) == 4
    bad = subprocess.run(
        [exe, "model", "generate", "--model", str(native_dir), "--prompt-ids", "1", "--top-p", "7"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == ["error: --top-p=7.0; accepted: a number in (0, 1]"]
