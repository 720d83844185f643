"""Tokenizer evaluation statistics and the comparison plot."""

from __future__ import annotations

from pathlib import Path

import pytest

import nanoforge.tokenizer.evaluate as evaluate_mod
from nanoforge.tokenizer.core import Tokenizer
from nanoforge.tokenizer.evaluate import embedding_cost, evaluate_tokenizer, plot_eval
from nanoforge.tokenizer.train import train_bpe

TEXT = "the cat sat on the mat.\nthe dog sat on the log.\n" * 40 + "naïve café 😀\n"


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return train_bpe(
        texts=[TEXT], vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False, num_workers=1
    )


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "eval.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_byte_tokenizer_statistics_are_exact(text_file: Path) -> None:
    tok = Tokenizer([], special_tokens=["<|endoftext|>"])  # ids are raw bytes
    row = evaluate_tokenizer(tok, [text_file])
    data = TEXT.encode("utf-8")
    assert row["n_bytes"] == row["n_tokens"] == len(data)
    assert row["n_chars"] == len(TEXT)
    assert row["bytes_per_token"] == 1.0
    assert row["chars_per_token"] == pytest.approx(len(TEXT) / len(data))
    assert row["vocab_used"] == len(set(data))
    assert row["vocab_utilisation"] == pytest.approx(len(set(data)) / 256)
    assert row["train_seconds"] is None


def test_trained_tokenizer_compresses_and_reports_training_time(trained: Tokenizer, text_file: Path) -> None:
    row = evaluate_tokenizer(trained, [text_file, text_file], name="t300")
    assert row["name"] == "t300"
    assert row["n_tokens"] == 2 * len(trained.encode(TEXT))
    assert row["bytes_per_token"] > 2.0
    used = set(trained.encode(TEXT))
    assert row["vocab_used"] == len(used)
    assert row["vocab_utilisation"] == pytest.approx(len(used) / (trained.vocab_size - 1))
    meta = trained.metadata
    assert row["train_seconds"] == pytest.approx(meta["count_seconds"] + meta["merge_seconds"])


def test_chunked_reading_counts_every_character(trained: Tokenizer, text_file: Path, monkeypatch) -> None:
    whole = evaluate_tokenizer(trained, [text_file])
    monkeypatch.setattr(evaluate_mod, "CHUNK_CHARS", 37)
    chunked = evaluate_tokenizer(trained, [text_file])
    assert (chunked["n_bytes"], chunked["n_chars"]) == (whole["n_bytes"], whole["n_chars"])
    # Cutting after newlines leaves every line's tokens unchanged here.
    assert chunked["n_tokens"] == whole["n_tokens"]


def test_embedding_cost_numbers() -> None:
    cost = embedding_cost(8192, 512, 8, tied=True)
    assert cost["embedding_params"] == 4_194_304
    assert cost["non_embedding_params"] == 25_165_824
    assert cost["embedding_share"] == pytest.approx(4_194_304 / 29_360_128)
    untied = embedding_cost(8192, 512, 8, tied=False)
    assert untied["embedding_params"] == 2 * cost["embedding_params"]
    with pytest.raises(ValueError, match="d_model >= 1"):
        embedding_cost(8192, 0, 8, tied=True)


def test_metadata_train_seconds_wins(text_file: Path) -> None:
    tok = Tokenizer([], metadata={"train_seconds": 12.5, "count_seconds": 1.0})
    assert evaluate_tokenizer(tok, [text_file])["train_seconds"] == 12.5


@pytest.mark.parametrize(
    ("content", "error", "needle"),
    [
        (None, FileNotFoundError, "evaluation file not found"),
        (b"", ValueError, "is empty"),
        (b"abc\x00\x01\x02", ValueError, "looks binary"),
        (b"abc \xff\xfe bad", ValueError, "not UTF-8 text"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, content: bytes | None, error: type, needle: str) -> None:
    path = tmp_path / "bad.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=needle):
        evaluate_tokenizer(Tokenizer([]), [path])


def test_no_files_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one text file"):
        evaluate_tokenizer(Tokenizer([]), [])


def test_plot_writes_a_png(trained: Tokenizer, text_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [
        evaluate_tokenizer(Tokenizer([]), [text_file], name="bytes"),
        evaluate_tokenizer(trained, [text_file]),
    ]
    out = plot_eval(rows, tmp_path / "plots" / "eval.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5_000
    assert [p.name for p in out.parent.iterdir()] == ["eval.png"]  # no temp file left behind
    with pytest.raises(ValueError, match=r"must end in \.png"):
        plot_eval(rows, tmp_path / "eval.jpg")
    with pytest.raises(ValueError, match="at least one"):
        plot_eval([], tmp_path / "empty.png")
