"""Data preparation: layout, document split, determinism across workers/locations, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nanoforge.tokenizer import load_tokenizer
from nanoforge.trainer import prepare as prep
from nanoforge.trainer.prepare import byte_tokenizer, plan_blocks, prepare, token_dtype


def _read(out: Path, split: str) -> np.ndarray:
    manifest = json.loads((out / "manifest.json").read_text())
    return np.fromfile(out / f"{split}.bin", dtype=manifest["dtype"])


def _docs_of(ids: np.ndarray, tok, eot: int) -> list[str]:  # type: ignore[no-untyped-def]
    bounds = np.flatnonzero(ids == eot)
    assert len(bounds) and bounds[-1] == len(ids) - 1, "every document ends with <|endoftext|>"
    starts = np.concatenate([[0], bounds[:-1] + 1])
    return [tok.decode(ids[s:e].tolist()) for s, e in zip(starts, bounds)]


def test_layout_counts_and_roundtrip(data_dir: Path, corpus_dir: Path, tokenizer_dir: Path) -> None:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    tok = load_tokenizer(tokenizer_dir)
    assert manifest["format"] == "nanoforge-tokens" and manifest["dtype"] == "uint16"
    assert manifest["vocab_size"] == tok.vocab_size == 300
    assert manifest["eot_id"] == tok.special_tokens["<|endoftext|>"]
    assert len(manifest["sources"]) == 6 and not (data_dir / "parts").exists()
    originals = [
        p for f in sorted(corpus_dir.rglob("*.txt")) for p in f.read_text().split("\n\n") if p.strip()
    ]
    seen = []
    for split in ("train", "val"):
        ids = _read(data_dir, split)
        stats = manifest["splits"][split]
        assert stats["tokens"] == len(ids) > 0
        docs = _docs_of(ids, tok, manifest["eot_id"])
        assert stats["documents"] == len(docs)
        assert stats["bytes"] == sum(len(d.encode()) for d in docs)
        assert stats["bytes_per_token"] == pytest.approx(stats["bytes"] / stats["tokens"])
        seen += docs
    assert sorted(seen) == sorted(originals)  # every document exactly once, whole, in one split
    val_share = manifest["splits"]["val"]["documents"] / len(originals)
    assert 0.08 < val_share < 0.35  # 180 documents at val_fraction=0.2


def test_same_bytes_with_workers_and_elsewhere(
    tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path, data_dir: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(corpus_dir, moved)
    out = tmp_path / "out"
    prepare([moved], tokenizer_dir, out, val_fraction=0.2, doc_split="paragraph", workers=2)
    for split in ("train", "val"):
        assert (out / f"{split}.bin").read_bytes() == (data_dir / f"{split}.bin").read_bytes()


def test_interrupted_prepare_resumes(
    tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path, data_dir: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    real = prep.encode_part
    calls: list[int] = []

    def dies_on_third(job, tok=None):  # type: ignore[no-untyped-def]
        calls.append(job.index)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed ^C while file 3 was being encoded
        return real(job, tok)

    monkeypatch.setattr(prep, "encode_part", dies_on_third)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare([corpus_dir], tokenizer_dir, out, val_fraction=0.2, doc_split="paragraph")
    assert sorted(p.name for p in (out / "parts").glob("*.json")) == [
        "000000.json",
        "000001.json",
        "settings.json",
    ]
    assert not (out / "manifest.json").exists()

    calls.clear()
    monkeypatch.setattr(
        prep, "encode_part", lambda job, tok=None: (calls.append(job.index), real(job, tok))[1]
    )
    prepare([corpus_dir], tokenizer_dir, out, val_fraction=0.2, doc_split="paragraph")
    assert calls == [2, 3, 4, 5]  # the two finished files were not encoded again
    for split in ("train", "val"):
        assert (out / f"{split}.bin").read_bytes() == (data_dir / f"{split}.bin").read_bytes()


def test_plan_blocks_cut_after_separators(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_bytes(b"a\n\nb\n\nc")
    assert plan_blocks(f, b"\n\n", 1) == [(0, 3), (3, 6), (6, 7)]
    assert plan_blocks(f, b"\n\n", 2) == [(0, 6), (6, 7)]  # the search starts at start + block
    assert plan_blocks(f, None, 2) == [(0, 7)]  # whole-file documents are never cut
    assert plan_blocks(f, b"\n\n", 100) == [(0, 7)]
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 70_000 + b"\n\n" + b"y" * 10)  # separator found past the first read
    assert plan_blocks(big, b"\n\n", 10) == [(0, 70_002), (70_002, 70_012)]


def test_big_files_are_cut_into_blocks(
    tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path, data_dir: Path
) -> None:
    tok = load_tokenizer(tokenizer_dir)
    one = tmp_path / "one"
    m1 = prepare([corpus_dir], tokenizer_dir, one, val_fraction=0.2, doc_split="paragraph", block_bytes=1000)
    two = tmp_path / "two"
    prepare(
        [corpus_dir], tokenizer_dir, two, val_fraction=0.2, doc_split="paragraph", block_bytes=1000, workers=2
    )
    for split in ("train", "val"):  # blocks: same bytes whatever the number of workers
        assert (one / f"{split}.bin").read_bytes() == (two / f"{split}.bin").read_bytes()

    def docs(d: Path) -> list[str]:
        return sorted(doc for s in ("train", "val") for doc in _docs_of(_read(d, s), tok, m1["eot_id"]))

    assert docs(one) == docs(data_dir)  # the same documents as without blocks, none cut or lost
    assert m1["splits"]["val"]["documents"] > 0


def test_byte_tokenizer_ids_are_bytes(tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_text("héllo\n\nwörld\n", encoding="utf-8")
    out = tmp_path / "out"
    manifest = prepare([src], "byte", out, val_fraction=0.0, doc_split="file")
    assert manifest["vocab_size"] == 256 and manifest["eot_id"] is None
    assert _read(out, "train").tolist() == list(src.read_bytes())
    assert manifest["splits"]["val"]["tokens"] == 0
    assert byte_tokenizer().encode("hé") == list("hé".encode())


def test_token_dtype() -> None:
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"val_fraction": 1.0}, r"--val-fraction=1\.0 must be in \[0, 1\)"),
        ({"doc_split": "sentence"}, r"--doc-split='sentence' is not supported; accepted: file, paragraph"),
        ({"workers": 0}, r"--workers=0 must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path: Path, corpus_dir: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        prepare([corpus_dir], "byte", tmp_path / "o", **kwargs)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        prepare([tmp_path / "missing.txt"], "byte", tmp_path / "o")
    one = tmp_path / "one.txt"
    one.write_text("a single document\n")
    with pytest.raises(ValueError, match="the train split is empty"):
        prepare([one], "byte", tmp_path / "o", val_fraction=0.999999)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: not valid JSON"):
        prepare([bad], "byte", tmp_path / "o", doc_split="jsonl")
