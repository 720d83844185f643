"""Native files: round trip, vocab.txt, atomic writes, and clear errors for every kind of bad file."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from nanoforge.tokenizer import Tokenizer, export_tiktoken, load_tokenizer, train_bpe
from nanoforge.tokenizer.io import render_bytes

TEXT = "the cat sat on the mat; 東京 🎉 naïve\n" * 40 + "def f(x):\n    return x + 1\n" * 40


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    t = train_bpe(
        texts=[TEXT], vocab_size=320, special_tokens=("<|endoftext|>", "<|pad|>"), show_progress=False
    )
    t.chat_template = {"kind": "chatml", "roles": ["user", "assistant"]}
    return t


def test_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    for source in (tmp_path / "tok", path):
        back = Tokenizer.load(source)
        assert back.merges == tok.merges
        assert back.special_tokens == tok.special_tokens
        assert back.pattern == tok.pattern
        assert back.chat_template == tok.chat_template
        assert back.metadata == tok.metadata
        assert back.encode(TEXT, allowed_special="all") == tok.encode(TEXT, allowed_special="all")
    assert isinstance(load_tokenizer(tmp_path / "tok"), Tokenizer)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "nanoforge-tokenizer" and data["version"] == 1
    assert data["merges"][0] == list(tok.merges[0])
    assert sorted(os.listdir(tmp_path / "tok")) == ["tokenizer.json", "vocab.txt"]  # no temp files left


def test_vocab_txt_lists_every_token(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    lines = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + tok.vocab_size
    a, b = tok.merges[0]
    assert lines[1 + 256] == f"256\t[{render_bytes(tok.token_bytes(256))}]\t{a} + {b}"
    assert lines[-1] == f"{tok.vocab_size - 1}\t[<|pad|>]\tspecial"
    assert lines[1 + 10] == "10\t[\\n]\tbyte"


def test_render_bytes() -> None:
    assert render_bytes(b" hi\n") == " hi\\n"
    assert render_bytes(b"\xe6\x9d") == "\\xe6\\x9d"
    assert render_bytes("東".encode()) == "東"
    assert render_bytes(b"a\\b\x00") == "a\\\\b\\u0000"


def test_failed_save_leaves_previous_files_intact(
    tok: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = Tokenizer([], special_tokens=["<x>"])
    old.save(tmp_path)
    before = (tmp_path / "tokenizer.json").read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        tok.save(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "tokenizer.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "vocab.txt"]
    assert Tokenizer.load(tmp_path).special_tokens == {"<x>": 256}


def _write(tmp_path: Path, obj: object) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _good() -> dict:
    return {"format": "nanoforge-tokenizer", "version": 1, "pattern": "gpt2", "merges": [[97, 98]],
            "special_tokens": {"<e>": 257}, "chat_template": None, "metadata": {}}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something-else"}, "format is 'something-else', expected 'nanoforge-tokenizer'"),
        ({"version": 2}, "unsupported nanoforge-tokenizer version 2; this build reads version 1"),
        ({"merges": [[97, 98], [300, 1]]}, r"merge 1 = \[300, 1\] references an unknown id"),
        ({"merges": [[97]]}, "'merges' must be a list of \\[int, int\\] pairs"),
        ({"special_tokens": {"<e>": 257, "<f>": 257}}, "two special tokens share an id"),
        ({"special_tokens": {"<e>": 999}}, "special token ids must follow the merges"),
        ({"pattern": "(bad"}, r"invalid split pattern '\(bad'"),
        ({"metadata": [1]}, "'metadata' must be an object"),
    ],
)
def test_bad_native_files(tmp_path: Path, change: dict, message: str) -> None:
    path = _write(tmp_path, {**_good(), **change})
    with pytest.raises(ValueError, match=message) as info:
        Tokenizer.load(path)
    assert str(path) in str(info.value)


def test_missing_fields_and_corruption(tmp_path: Path) -> None:
    good = _good()
    del good["merges"]
    path = _write(tmp_path, good)
    with pytest.raises(ValueError, match=r"missing required fields \['merges'\]"):
        Tokenizer.load(path)
    path.write_text(json.dumps(_good())[:-10], encoding="utf-8")
    with pytest.raises(ValueError, match="corrupted JSON"):
        Tokenizer.load(path)
    path.write_text('{"format": "nanoforge-tokenizer", "version": 1, "pattern": "gpt2", "merges": [], '
                    '"special_tokens": {"<e>": 256, "<e>": 257}}', encoding="utf-8")  # fmt: skip
    with pytest.raises(ValueError, match=r"duplicate keys \['<e>'\]"):
        Tokenizer.load(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a JSON object"):
        Tokenizer.load(path)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        Tokenizer.load(path)
    with pytest.raises(FileNotFoundError, match="no tokenizer file at"):
        Tokenizer.load(tmp_path / "nowhere")
    _write(tmp_path, {"something": 1})
    with pytest.raises(ValueError, match="unsupported tokenizer format 'unknown'"):
        load_tokenizer(tmp_path)


def test_save_into_a_file_path_is_refused(tok: Tokenizer, tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        tok.save(target)


def test_export_tiktoken_format(tok: Tokenizer, tmp_path: Path) -> None:
    path = export_tiktoken(tok, tmp_path / "tok.tiktoken")
    lines = path.read_text(encoding="ascii").splitlines()
    assert len(lines) == tok.vocab_size - len(tok.special_tokens)
    token, rank = lines[260].split(" ")
    assert base64.b64decode(token) == tok.token_bytes(260) and rank == "260"


def test_load_tokenizer_imports_a_lazy_loader_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nanoforge.tokenizer import io

    (tmp_path / "fake_format_loader.py").write_text(
        "from nanoforge.tokenizer.io import LOADERS\nLOADERS['fake'] = lambda file, obj: ('loaded', obj['x'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(io.LAZY_LOADERS, "fake", "fake_format_loader")
    monkeypatch.setattr(io, "LOADERS", dict(io.LOADERS))  # the fake entry must not outlive the test
    _write(tmp_path, {"format": "fake", "x": 7})
    assert load_tokenizer(tmp_path) == ("loaded", 7)
    monkeypatch.setitem(io.LAZY_LOADERS, "broken", "no_such_module_here")
    _write(tmp_path, {"format": "broken"})
    with pytest.raises(ValueError, match="needs an optional dependency"):
        load_tokenizer(tmp_path)
