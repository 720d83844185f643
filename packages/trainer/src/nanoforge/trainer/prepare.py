"""Corpus -> token memmaps: ``train.bin`` / ``val.bin`` plus ``manifest.json`` and a tokenizer copy.

What it does: expands the inputs (files, directories, globs) into text files, cuts each file into documents
(``DOC_SPLITTERS``: whole file, blank-line paragraphs, lines, or JSONL ``text`` fields), sends each
document to train or val by hashing ``relative path @ block offset : document index`` (deterministic,
independent of where the corpus lives, the file order and the number of workers), encodes documents in
worker processes, appends the
``<|endoftext|>`` id after each document when the tokenizer has it, and writes flat uint16 arrays (uint32
when the vocabulary does not fit 16 bits). Files larger than ``BLOCK_BYTES`` are cut into blocks at a
document separator, so one big file is also spread over the workers. Each block becomes a finished *part*
(two arrays + a JSON marker, written atomically) before the parts are joined, so an interrupted run on a
big corpus resumes where it stopped; parts are deleted once the final files exist.

Layout of the output directory::

    train.bin, val.bin   raw token ids (dtype in the manifest), documents back to back
    manifest.json        {"format": "nanoforge-tokens", "version": 1, dtype, vocab_size, tokenizer_sha256,
                          eot_id, splits: {train: {tokens, bytes, documents}, val: {...}}, sources, ...}
    tokenizer/           the tokenizer the ids came from (its hash is in the manifest)

The encoding of the parts is pluggable (``runner``): worker processes here (``run_local``), Ray Data tasks
in ``ray_launcher.prepare_ray`` (``--ray``); either way the same pure ``encode_text`` makes the ids, so the
output bytes are identical.

What it does not do: shuffle or pack sequences (the loader samples random windows), import Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from nanoforge.core_model.checkpoint import atomic_write_bytes, atomic_write_json
from nanoforge.tokenizer import Tokenizer, load_tokenizer
from nanoforge.tokenizer.corpus import collect_files
from nanoforge.tokenizer.io import native_from_dict, to_native_dict

FORMAT = "nanoforge-tokens"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
EOT = "<|endoftext|>"
#: Built-in tokenizer names accepted by ``--tokenizer`` besides a directory.
BYTE_TOKENIZER = "byte"
#: Target size of one encoding block; files are cut at a document separator near each multiple of it.
BLOCK_BYTES = 4 << 20


# ------------------------------------------------------------------------------------------ helpers
def byte_tokenizer() -> Tokenizer:
    """The byte-level tokenizer: no merges, no specials, ids 0..255 are the raw bytes."""
    return Tokenizer([], pattern="gpt4", metadata={"name": "byte"})


def resolve_tokenizer(spec: str | os.PathLike[str]) -> Tokenizer:
    """``"byte"`` or a tokenizer directory/file (nanoforge format)."""
    if str(spec) == BYTE_TOKENIZER:
        return byte_tokenizer()
    tok = load_tokenizer(spec)
    if not isinstance(tok, Tokenizer):
        raise ValueError(f"{spec}: only nanoforge tokenizers can prepare data, got {type(tok).__name__}")
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    """SHA-256 of what decides the ids: split pattern, merges, special tokens (not metadata)."""
    canon = json.dumps(
        {"pattern": tok.pattern, "merges": tok.merges, "special": tok.special_tokens}, sort_keys=True
    )
    return hashlib.sha256(canon.encode()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def is_val(key: str, val_fraction: float) -> bool:
    """Deterministic split: the first 8 bytes of sha256(key) as a fraction of 2**64, below ``val_fraction``."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction


# ----------------------------------------------------------------------------------- document splits
def _split_file(text: str) -> list[str]:
    return [text]


def _split_paragraphs(text: str) -> list[str]:
    return [p for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


def _split_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _split_jsonl(text: str) -> list[str]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {n}: not valid JSON ({e})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError(f"line {n}: expected an object with a string 'text' field")
        docs.append(obj["text"])
    return docs


DOC_SPLITTERS: dict[str, Callable[[str], list[str]]] = {
    "file": _split_file,
    "paragraph": _split_paragraphs,
    "line": _split_lines,
    "jsonl": _split_jsonl,
}
#: Where a file may be cut into blocks without cutting a document (None: never).
DOC_SEPARATORS: dict[str, bytes | None] = {"file": None, "paragraph": b"\n\n", "line": b"\n", "jsonl": b"\n"}


def plan_blocks(path: Path, separator: bytes | None, block_bytes: int = BLOCK_BYTES) -> list[tuple[int, int]]:
    """Byte ranges ``[(start, end), ...]`` covering ``path``, each ending just after a separator.

    Example: ``b"a\\n\\nb\\n\\nc"`` with separator ``b"\\n\\n"`` and block 1 -> ``[(0, 3), (3, 6), (6, 7)]``.
    """
    size = path.stat().st_size
    if separator is None or size <= block_bytes:
        return [(0, size)]
    blocks, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            end = size
            if start + block_bytes < size:
                f.seek(start + block_bytes)
                pos, tail = start + block_bytes, b""
                while chunk := f.read(1 << 16):
                    found = (tail + chunk).find(separator)
                    if found >= 0:
                        end = pos - len(tail) + found + len(separator)
                        break
                    tail = chunk[-(len(separator) - 1) :] if len(separator) > 1 else b""
                    pos += len(chunk)
            blocks.append((start, end))
            start = end
    return blocks


# -------------------------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class PartJob:
    """One block of an input file to encode into ``parts/<index>.{train,val}.bin`` + ``<index>.json``."""

    index: int
    path: str
    start: int
    end: int
    key: str  # path relative to its input root: the split hash does not depend on where the corpus lives
    doc_split: str
    val_fraction: float
    out_dir: str


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer: dict[str, Any]) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = native_from_dict(tokenizer, "prepare worker")


def _file_id(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_block(job: PartJob) -> str:
    """The text of one block (``job.start:job.end`` of ``job.path``) as UTF-8.

    Raises:
        ValueError: the block is not valid UTF-8 (named with the file).
    """
    with open(job.path, "rb") as f:
        f.seek(job.start)
        data = f.read(job.end - job.start)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{job.path}: {e}") from e


def encode_text(job: PartJob, text: str, tok: Tokenizer) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Cut ``text`` (the block of ``job``) into documents, send each to its split, encode.

    Returns:
        ``({"train": ids, "val": ids}, stats)``: token arrays in the data dtype and per-split counts
        ``{split: {tokens, bytes, documents}}``. Pure: the same job, text and tokenizer give the same
        result in any process (what makes the local and the Ray paths write identical bytes).
    """
    try:
        docs = DOC_SPLITTERS[job.doc_split](text)
    except ValueError as e:
        raise ValueError(f"{job.path}: {e}") from e
    eot = tok.special_tokens.get(EOT)
    dtype = token_dtype(tok.vocab_size)
    ids: dict[str, list[int]] = {s: [] for s in SPLITS}
    stats = {s: {"tokens": 0, "bytes": 0, "documents": 0} for s in SPLITS}
    for i, doc in enumerate(docs):
        split = "val" if is_val(f"{job.key}@{job.start}:{i}", job.val_fraction) else "train"
        doc_ids = tok.encode(doc)
        if eot is not None:
            doc_ids.append(eot)
        ids[split].extend(doc_ids)
        stats[split]["tokens"] += len(doc_ids)
        stats[split]["bytes"] += len(doc.encode("utf-8"))
        stats[split]["documents"] += 1
    return {s: np.asarray(ids[s], dtype=dtype) for s in SPLITS}, stats


def write_part(job: PartJob, arrays: dict[str, np.ndarray], stats: dict[str, Any]) -> dict[str, Any]:
    """Write a block's two part arrays, then its JSON marker (last: the part is complete); returns the marker."""
    out = Path(job.out_dir)
    for split in SPLITS:
        atomic_write_bytes(out / f"{job.index:06d}.{split}.bin", arrays[split].tobytes())
    marker = {
        "source": _file_id(Path(job.path)),
        "range": [job.start, job.end],
        "key": job.key,
        "splits": stats,
    }
    atomic_write_json(out / f"{job.index:06d}.json", marker)
    return marker


def encode_part(job: PartJob, tok: Tokenizer | None = None) -> dict[str, Any]:
    """Read, encode and write one block; returns its marker."""
    tok = tok or _WORKER_TOKENIZER
    assert tok is not None, "worker tokenizer not initialised"
    return write_part(job, *encode_text(job, read_block(job), tok))


#: ``runner(todo, tokenizer, workers)`` encodes and writes the parts still to do (``write_part``), yielding
#: ``(part index, marker)`` as each finishes, in any order. ``run_local`` here; Ray Data in ``ray_launcher``.
PartRunner = Callable[[list[PartJob], Tokenizer, int], Iterable[tuple[int, dict[str, Any]]]]


def run_local(todo: list[PartJob], tok: Tokenizer, workers: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Encode parts in this process (``workers == 1``) or in a pool of spawned processes."""
    if workers == 1 or len(todo) <= 1:
        for job in todo:
            yield job.index, encode_part(job, tok)
        return
    ctx = get_context("spawn")  # no fork after torch/threads in the parent
    with ProcessPoolExecutor(
        min(workers, len(todo)), mp_context=ctx, initializer=_init_worker, initargs=(to_native_dict(tok),)
    ) as pool:
        for job, marker in zip(todo, pool.map(encode_part, todo)):
            yield job.index, marker


def _part_done(job: PartJob, expected_source: dict[str, Any]) -> dict[str, Any] | None:
    marker = Path(job.out_dir) / f"{job.index:06d}.json"
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("source") != expected_source or data.get("range") != [job.start, job.end]:
        return None
    if not all((Path(job.out_dir) / f"{job.index:06d}.{s}.bin").is_file() for s in SPLITS):
        return None
    return data


# ------------------------------------------------------------------------------------------ prepare
def _collect(inputs: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """Files with their split keys: the path relative to the input it came from."""
    out: list[tuple[Path, str]] = []
    for item in inputs:
        root = Path(item).resolve()
        files, _ = collect_files([item])
        for f in files:
            key = f.name if root.is_file() else str(f.relative_to(root)) if f.is_relative_to(root) else str(f)
            out.append((f, key))
    unique: dict[Path, str] = {}
    for f, key in out:
        unique.setdefault(f, key)  # a file reached through two inputs is read once
    return list(unique.items())


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    tokenizer: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    doc_split: str = "file",
    workers: int = 1,
    on_part: Callable[[int, int], None] | None = None,
    block_bytes: int = BLOCK_BYTES,
    runner: PartRunner | None = None,
) -> dict[str, Any]:
    """Tokenize ``inputs`` into ``out_dir``; returns the manifest.

    Args:
        inputs: files, directories (recursive, text files only) or globs.
        tokenizer: a tokenizer directory, or ``"byte"`` for raw bytes.
        out_dir: created if needed; parts of an interrupted run found there are reused.
        val_fraction: expected share of documents in ``val`` (0 <= f < 1).
        doc_split: a key of ``DOC_SPLITTERS``.
        workers: encoding processes (1 = in this process).
        on_part: ``on_part(done, total)`` after each finished block (progress bars).
        block_bytes: target block size for cutting big files (``BLOCK_BYTES``).
        runner: how the parts are encoded (``run_local``; ``ray_launcher.ray_runner`` for Ray Data).

    Raises:
        ValueError: bad arguments, unreadable inputs, an empty train split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction={val_fraction} must be in [0, 1)")
    if doc_split not in DOC_SPLITTERS:
        raise ValueError(f"--doc-split={doc_split!r} is not supported; accepted: {', '.join(DOC_SPLITTERS)}")
    if workers < 1:
        raise ValueError(f"--workers={workers} must be >= 1")
    if block_bytes < 1:
        raise ValueError(f"block_bytes={block_bytes} must be >= 1")
    if not inputs:
        raise ValueError("no --input given; pass one or more files, directories or globs")
    tok = resolve_tokenizer(tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts_dir = out / "parts"
    parts_dir.mkdir(exist_ok=True)
    settings = {
        "tokenizer_sha256": tokenizer_hash(tok),
        "val_fraction": val_fraction,
        "doc_split": doc_split,
        "block_bytes": block_bytes,
    }
    settings_file = parts_dir / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        shutil.rmtree(parts_dir)  # parts from other settings cannot be reused
        parts_dir.mkdir()
    atomic_write_json(settings_file, settings)

    files = _collect(inputs)
    ranges = [(f, key, r) for f, key in files for r in plan_blocks(f, DOC_SEPARATORS[doc_split], block_bytes)]
    jobs = [
        PartJob(i, str(f), start, end, key, doc_split, val_fraction, str(parts_dir))
        for i, (f, key, (start, end)) in enumerate(ranges)
    ]
    markers: dict[int, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        done = _part_done(job, _file_id(Path(job.path)))
        if done is not None:
            markers[job.index] = done
        else:
            todo.append(job)
    if on_part:
        on_part(len(markers), len(jobs))
    for index, marker in (runner or run_local)(todo, tok, workers):
        markers[index] = marker
        if on_part:
            on_part(len(markers), len(jobs))

    dtype = token_dtype(tok.vocab_size)
    totals = {s: {"tokens": 0, "bytes": 0, "documents": 0} for s in SPLITS}
    for m in markers.values():
        for s in SPLITS:
            for k in totals[s]:
                totals[s][k] += m["splits"][s][k]
    if totals["train"]["tokens"] == 0:
        raise ValueError(
            f"the train split is empty ({len(files)} file(s)); give more text or a smaller --val-fraction"
        )
    for split in SPLITS:
        _join([parts_dir / f"{j.index:06d}.{split}.bin" for j in jobs], out / f"{split}.bin")
    tok.save(out / "tokenizer")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "tokenizer_sha256": settings["tokenizer_sha256"],
        "eot_id": tok.special_tokens.get(EOT),
        "val_fraction": val_fraction,
        "doc_split": doc_split,
        "splits": {
            s: {**totals[s], "bytes_per_token": totals[s]["bytes"] / max(1, totals[s]["tokens"])}
            for s in SPLITS
        },
        "sources": [{"path": str(f), "key": key} for f, key in files],
    }
    atomic_write_json(out / MANIFEST, manifest)  # last: a directory with a manifest is complete
    shutil.rmtree(parts_dir)
    return manifest


def _join(parts: list[Path], dest: Path) -> None:
    """Concatenate part files into ``dest`` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_arrays(
    out_dir: str | os.PathLike[str],
    arrays: dict[str, np.ndarray],
    tok: Tokenizer,
    byte_counts: dict[str, int],
    sources: list[str],
) -> dict[str, Any]:
    """Write already-encoded splits (e.g. nanoGPT's contiguous 90/10 split) in the same layout as ``prepare``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.vocab_size)
    splits: dict[str, dict[str, int | float]] = {}
    for s in SPLITS:
        arr = np.asarray(arrays[s]).astype(dtype)
        atomic_write_bytes(out / f"{s}.bin", arr.tobytes())
        splits[s] = {"tokens": int(arr.size), "bytes": byte_counts[s], "documents": 1}
        splits[s]["bytes_per_token"] = byte_counts[s] / max(1, arr.size)
    tok.save(out / "tokenizer")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "tokenizer_sha256": tokenizer_hash(tok),
        "eot_id": tok.special_tokens.get(EOT),
        "val_fraction": None,
        "doc_split": "given",
        "splits": splits,
        "sources": [{"path": s, "key": Path(s).name} for s in sources],
    }
    atomic_write_json(out / MANIFEST, manifest)
    return manifest
