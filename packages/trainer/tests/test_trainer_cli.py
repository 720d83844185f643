"""The ``nanoforge train`` commands through the umbrella CLI: prepare, pretrain, checkpoints, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanoforge.cli.main import main


def test_prepare_pretrain_checkpoints_generate(
    tmp_path: Path,
    corpus_dir: Path,
    tokenizer_dir: Path,
    tiny_overrides: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    args = [
        "--input",
        str(corpus_dir / "a"),
        "--input",
        str(corpus_dir / "b"),
        "--tokenizer",
        str(tokenizer_dir),
    ]
    assert main(["train", "prepare", *args, "--out", str(data), "--doc-split", "paragraph"]) == 0
    out = capsys.readouterr().out
    assert f"{data}: train " in out and "dtype uint16" in out
    assert json.loads((data / "manifest.json").read_text())["doc_split"] == "paragraph"

    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_overrides if not o.startswith("data.dir=")] + [
        f"data.dir={data}",
        "train.max_iters=20",
    ]
    assert main(["train", "pretrain", "--config", "shakespeare-char", "--out", str(run_dir), *overrides]) == 0
    out = capsys.readouterr().out
    assert out.startswith("step 20: val loss ") and f"model in {run_dir / 'final'}" in out

    # --resume without --config uses the run's saved config; a longer max_iters continues the run
    assert main(["train", "pretrain", "--out", str(run_dir), "--resume", "train.max_iters=30"]) == 0
    assert capsys.readouterr().out.startswith("step 30: ")

    assert main(["train", "checkpoints", str(run_dir), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["step"] for r in rows] == [20, 30] and all("val_loss" in r for r in rows)

    # the exported model is a normal model directory: `nanoforge model generate` works on it
    assert (
        main(
            [
                "model",
                "generate",
                "--model",
                str(run_dir / "final"),
                "--prompt",
                "the quick",
                "--max-new-tokens",
                "5",
                "--seed",
                "0",
                "--json",
            ]
        )
        == 0
    )
    gen = json.loads(capsys.readouterr().out)
    assert len(gen["ids"]) >= 1 and isinstance(gen["text"], str)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "pretrain", "--config", "shakespeare-char", "train.bach_size=1"],
            "unknown key(s) ['train.bach_size']",
        ),
        (["train", "pretrain", "--config", "nope"], "neither a file nor a shipped config"),
        (["train", "pretrain"], "--config is required"),
        (["train", "prepare", "--input", "/no/such/file.txt", "--tokenizer", "byte"], "does not exist"),
        (["train", "checkpoints", "/no/such/run"], "run directory /no/such/run does not exist"),
    ],
)
def test_errors_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[1] in ("pretrain", "prepare"):
        argv = [*argv[:2], "--out", str(tmp_path / "o"), *argv[2:]]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
