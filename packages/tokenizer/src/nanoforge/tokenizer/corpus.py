"""Reading a training corpus and counting its pre-tokens, in bounded memory and in parallel.

Inputs are files, directories (searched recursively for text files; hidden entries and binary files are
skipped) and glob patterns. Each file is cut into blocks of about ``chunk_bytes`` at *safe boundaries*: just
after a ``\\n`` that sits between two printable ASCII characters. Neither named split pattern lets a piece
cross such a newline, and the piece on each side is the same whether the text is split there or not, so
counting block by block gives exactly the counts of the whole file. (A custom pattern whose pieces can span
``"x\\ny"`` would see a few pieces cut at block edges; documented, harmless for statistics.)

Workers receive only ``(path, start, end)`` and the pattern, read their block themselves and send back a
``Counter`` of pieces, so nothing large is pickled towards them. What this module does not do: merge
pairs (``train.py``) or normalise text (no NFC, no lower-casing: bytes are learned as they are).
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nanoforge.tokenizer.patterns import compile_pattern

#: Target size of one counting block.
CHUNK_BYTES = 4 << 20
#: Bytes read from the start of a file to decide whether it is text.
SNIFF_BYTES = 8192
#: A file with more than this fraction of invalid UTF-8 bytes is binary, not text.
MAX_BAD_FRACTION = 0.01
_SAFE = range(0x21, 0x7F)  # printable, non-space ASCII


@dataclass(frozen=True)
class Chunk:
    """A byte range of one file: ``path[start:end]``."""

    path: str
    start: int
    end: int


@dataclass
class CountResult:
    """Piece counts plus what was read (for metadata and binary detection)."""

    counts: Counter[str]
    n_bytes: int = 0
    n_files: int = 0
    skipped_files: int = 0


def binary_reason(data: bytes, final: bool) -> str | None:
    """Why ``data`` looks binary (NUL bytes or too much invalid UTF-8), or ``None`` if it looks like text.

    Args:
        data: the bytes (a whole file or a prefix of it).
        final: ``False`` when ``data`` is a prefix, so a character cut at its end is not an error.
    """
    if b"\x00" in data:
        return "contains NUL bytes"
    if not final:
        data = data[: len(data) - _incomplete_tail(data)]
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count("\ufffd".encode())
    if bad > MAX_BAD_FRACTION * max(len(data), 1):
        return f"{bad} of {len(data)} bytes are not valid UTF-8"
    return None


def _incomplete_tail(data: bytes) -> int:
    """Length of a possibly cut UTF-8 character at the end of ``data`` (0..3)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:  # a lead byte: cut if the sequence needs more bytes than remain
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if need > back else 0
    return 0


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES + 1)
    return binary_reason(head[:SNIFF_BYTES], final=len(head) <= SNIFF_BYTES)


def collect_files(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], int]:
    """Expand files, directories (recursive) and globs into a sorted, de-duplicated list of text files.

    Returns:
        ``(files, skipped)``: the text files, and how many files inside directories/globs were skipped
        as empty or binary.

    Raises:
        ValueError: a named file is missing, empty or binary; a glob or directory yields no text file.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    skipped = 0
    for item in inputs:
        spec = os.fspath(item)
        path = Path(spec)
        if path.is_file():
            if path.stat().st_size == 0:
                raise ValueError(f"training file {path} is empty")
            reason = _sniff(path)
            if reason:
                raise ValueError(f"training file {path} is not UTF-8 text: {reason}")
            files.append(path)
            continue
        if path.is_dir():
            candidates = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
            )
        elif any(ch in spec for ch in "*?["):
            candidates = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        else:
            raise ValueError(
                f"training input {spec!r} does not exist (expected a file, a directory or a glob)"
            )
        found = 0
        for p in candidates:
            if p.stat().st_size == 0 or _sniff(p):
                skipped += 1
                continue
            files.append(p)
            found += 1
        if not found:
            raise ValueError(f"training input {spec!r} contains no non-empty UTF-8 text file")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, skipped


def plan_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """Cut one file into blocks of about ``chunk_bytes`` at safe newline boundaries (see module doc)."""
    size = path.stat().st_size
    chunks: list[Chunk] = []
    start = 0
    with open(path, "rb") as f:
        while size - start > chunk_bytes:
            pos = start + chunk_bytes
            cut = None
            while cut is None and pos < size - 1:
                f.seek(pos - 1)
                window = f.read(65536 + 2)
                j = window.find(b"\n", 1)
                while 0 < j < len(window) - 1:
                    if window[j - 1] in _SAFE and window[j + 1] in _SAFE:
                        cut = pos - 1 + j + 1  # just after the newline
                        break
                    j = window.find(b"\n", j + 1)
                pos += 65536
            if cut is None:
                break
            chunks.append(Chunk(str(path), start, cut))
            start = cut
    chunks.append(Chunk(str(path), start, size))
    return chunks


def count_chunk(chunk: Chunk, pattern: str) -> tuple[Counter[str], int, str | None]:
    """Count the pieces of one block. Returns ``(counts, bytes read, binary reason or None)``."""
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        data = f.read(chunk.end - chunk.start)
    reason = binary_reason(data, final=True)
    text = data.decode("utf-8", errors="replace")
    return Counter(compile_pattern(pattern).findall(text)), len(data), reason


def _count_chunk_star(args: tuple[Chunk, str]) -> tuple[Counter[str], int, str | None]:
    return count_chunk(*args)


def count_files(
    files: Sequence[Path],
    pattern: str,
    *,
    num_workers: int = 1,
    chunk_bytes: int = CHUNK_BYTES,
    on_progress: Callable[[int], None] | None = None,
) -> CountResult:
    """Count pieces over many files; blocks go to ``num_workers`` processes when there is more than one.

    Raises:
        ValueError: a block turns out to be binary (NUL bytes or too much invalid UTF-8), naming the file.
    """
    chunks = [c for f in files for c in plan_chunks(f, chunk_bytes)]
    result = CountResult(Counter(), n_files=len(files))
    tasks = [(c, pattern) for c in chunks]

    def absorb(chunk: Chunk, out: tuple[Counter[str], int, str | None]) -> None:
        counts, n, reason = out
        if reason:
            raise ValueError(
                f"training file {chunk.path} is not UTF-8 text: {reason} (bytes {chunk.start}..{chunk.end})"
            )
        result.counts.update(counts)
        result.n_bytes += n
        if on_progress:
            on_progress(n)

    if num_workers <= 1 or len(chunks) <= 1:
        for task in tasks:
            absorb(task[0], count_chunk(*task))
        return result
    with ProcessPoolExecutor(max_workers=min(num_workers, len(chunks))) as pool:
        for task, out in zip(tasks, pool.map(_count_chunk_star, tasks)):
            absorb(task[0], out)
    return result


def count_texts(
    texts: Iterable[str], pattern: str, on_progress: Callable[[int], None] | None = None
) -> CountResult:
    """Count the pieces of in-memory texts (each text is split on its own)."""
    split = compile_pattern(pattern).findall
    result = CountResult(Counter())
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must contain str, got {type(text).__name__}")
        result.counts.update(split(text))
        n = len(text.encode("utf-8"))
        result.n_bytes += n
        if on_progress:
            on_progress(n)
    return result
