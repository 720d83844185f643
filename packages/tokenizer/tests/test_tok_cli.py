"""`nanoforge tokenizer ...`: the commands work end to end, and bad input gives one `error:` line.

Runs in-process through the umbrella click group (CliRunner) and, for every bad-input case, as a real
subprocess of the installed `nanoforge` command (exit status + stderr, no traceback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nanoforge.cli.main import cli
from nanoforge.tokenizer.core import Tokenizer

CORPUS = (
    "The quick brown fox jumps over the lazy dog.\nHello world, hello tokenizer!\n" * 60 + "naïve 😀 日本\n"
)


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, list(args), input=stdin, catch_exceptions=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus: Path) -> Path:
    out = corpus.parent / "tok"
    result = run(
        "tokenizer", "train", "--input", str(corpus), "--vocab-size", "320", "--out", str(out), "--workers", "1",
        "--min-frequency", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_loadable_tokenizer_with_chat_template(trained: Path) -> None:
    tok = Tokenizer.load(trained)
    assert tok.vocab_size == 320
    assert tok.chat_template is not None and tok.chat_template["name"] == "chatml"
    assert {"<|endoftext|>", "<|im_start|>", "<|im_end|>"} <= set(tok.special_tokens)
    assert sorted(p.name for p in trained.iterdir()) == ["tokenizer.json", "vocab.txt"]
    assert not [p for p in trained.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert trained.stat().st_mode & 0o055  # an ordinary (group/other readable) directory, not mkdtemp's 0700


def test_train_options(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpt2"
    result = run(
        "tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out),
        "--pattern", "gpt2", "--special", "<|pad|>", "--chat-template", "none", "--workers", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tok = Tokenizer.load(out)
    assert (
        tok.chat_template is None
        and "<|pad|>" in tok.special_tokens
        and "<|im_start|>" not in tok.special_tokens
    )
    again = run("tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out))
    assert again.exit_code == 1 and "already exists" in again.output
    forced = run(
        "tokenizer", "train", "--input", str(corpus), "--vocab-size", "290", "--out", str(out), "--force"
    )
    assert forced.exit_code == 0 and Tokenizer.load(out).vocab_size == 290


def test_encode_decode_round_trip(trained: Path) -> None:
    tok = Tokenizer.load(trained)
    text = "Hello <|im_end|> naïve 😀"
    encoded = run("tokenizer", "encode", "--tokenizer", str(trained), "--text", text)
    assert encoded.exit_code == 0
    assert encoded.stdout.strip() == ",".join(map(str, tok.encode(text)))
    special = run("tokenizer", "encode", "--tokenizer", str(trained), "--text", text, "--allow-special")
    assert str(tok.special_tokens["<|im_end|>"]) in special.stdout.strip().split(",")
    decoded = run("tokenizer", "decode", "--tokenizer", str(trained), stdin=encoded.stdout)
    assert decoded.exit_code == 0 and decoded.stdout == text + "\n"
    piped = run("tokenizer", "encode", "--tokenizer", str(trained), stdin=text)
    assert piped.stdout == encoded.stdout


def test_export_hf_and_tiktoken(trained: Path, tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    tok = Tokenizer.load(trained)
    text = "The quick brown fox 😀 says hello"
    hf_dir = tmp_path / "hf"
    assert (
        run(
            "tokenizer", "export", "--tokenizer", str(trained), "--format", "hf", "--out", str(hf_dir)
        ).exit_code
        == 0
    )
    hf = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text)
    assert json.loads((hf_dir / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    ranks_file = tmp_path / "tok.tiktoken"
    result = run(
        "tokenizer", "export", "--tokenizer", str(trained), "--format", "tiktoken", "--out", str(ranks_file)
    )
    assert result.exit_code == 0
    enc = tiktoken.Encoding(
        "t", pat_str=tok.pattern, mergeable_ranks=load_tiktoken_bpe(str(ranks_file)), special_tokens={}
    )
    assert enc.encode_ordinary(text) == tok.encode(text)
    # An HF export cannot be exported again: only native tokenizers are sources.
    again = run(
        "tokenizer", "export", "--tokenizer", str(hf_dir), "--format", "hf", "--out", str(tmp_path / "x")
    )
    assert again.exit_code == 1 and "not a native nanoforge tokenizer" in again.output


def test_eval_table_and_json(trained: Path, corpus: Path, tmp_path: Path) -> None:
    table = run("tokenizer", "eval", "--tokenizer", str(trained), "--input", str(corpus))
    assert table.exit_code == 0 and "bytes per token" in table.stdout and "embedding share" in table.stdout
    as_json = run(
        "tokenizer", "eval", "--tokenizer", str(trained), "--input", str(corpus),
        "--width", "64", "--layers", "2", "--json",
    )  # fmt: skip
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert rows[0]["n_bytes"] == len(CORPUS.encode()) and rows[0]["d_model"] == 64
    assert rows[0]["embedding_params"] == 320 * 64


def test_eval_plot(trained: Path, corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "eval.png"
    result = run("tokenizer", "eval", "--tokenizer", str(trained), "--input", str(corpus), "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------- bad input
def bad_cases(tmp: Path, trained: Path) -> list[tuple[list[str], str]]:
    """(arguments, expected message fragment) for each bad input, with the files they need."""
    (tmp / "empty.txt").write_text("")
    (tmp / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (tmp / "ok.txt").write_text(CORPUS)
    corrupt = tmp / "corrupt"
    corrupt.mkdir(exist_ok=True)
    (corrupt / "tokenizer.json").write_text('{"format": "nanoforge-tokenizer", "version": 1, "merges": [[1,')
    out = str(tmp / "out")
    train = ["tokenizer", "train", "--out", out, "--workers", "1"]
    return [
        ([*train, "--input", str(tmp / "missing.txt"), "--vocab-size", "300"], "input not found"),
        ([*train, "--input", str(tmp / "empty.txt"), "--vocab-size", "300"], "empty"),
        ([*train, "--input", str(tmp / "binary.bin"), "--vocab-size", "300"], "not UTF-8 text"),
        ([*train, "--input", str(tmp / "ok.txt"), "--vocab-size", "100"], "vocab_size must be an int >= 261"),
        (
            [*train, "--input", str(tmp / "ok.txt"), "--vocab-size", "300", "--pattern", "(unclosed"],
            "invalid split pattern",
        ),
        (["tokenizer", "encode", "--tokenizer", str(corrupt), "--text", "x"], "corrupted JSON"),
        (["tokenizer", "encode", "--tokenizer", str(tmp / "nope"), "--text", "x"], "no tokenizer file"),
        (["tokenizer", "decode", "--tokenizer", str(trained), "--ids", "1,2,x"], "bad token id 'x'"),
        (["tokenizer", "decode", "--tokenizer", str(trained), "--ids", "1,99999"], "out of range"),
        (
            ["tokenizer", "eval", "--tokenizer", str(trained), "--input", str(tmp / "binary.bin")],
            "not UTF-8 text",
        ),
        (
            [
                "tokenizer",
                "eval",
                "--tokenizer",
                str(trained),
                "--input",
                str(tmp / "ok.txt"),
                "--plot",
                "x.jpg",
            ],
            ".png",
        ),
    ]


def test_bad_input_in_process(trained: Path, tmp_path: Path) -> None:
    for args, needle in bad_cases(tmp_path, trained):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, lines)
        assert not (tmp_path / "out").exists()
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no half-written dir


def nanoforge_command() -> list[str]:
    exe = shutil.which("nanoforge", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "nanoforge.cli"]


def test_bad_input_as_real_subprocess(trained: Path, tmp_path: Path) -> None:
    env = {**os.environ, "NANOFORGE_DEBUG": "0"}
    for args, needle in bad_cases(tmp_path, trained):
        proc = subprocess.run(
            [*nanoforge_command(), *args], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
        )
        assert proc.returncode == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, lines)
        assert not (tmp_path / "out").exists()
    usage = subprocess.run(
        [*nanoforge_command(), "tokenizer", "train"], capture_output=True, text=True, timeout=120
    )
    assert usage.returncode == 2 and "Missing option" in usage.stderr and "Traceback" not in usage.stderr
