"""The embedded default corpora, built from the local Python standard library (no download needed).

Every Python installation ships megabytes of English documentation and code, so the main job, the
benchmarks and the experiments can run with no data directory:

* ``stdlib_docstrings()`` walks the stdlib's ``.py`` files in a fixed order, parses each with ``ast``
  (never imports or executes it) and yields module, class and function docstrings (~1.6 MB on 3.11);
  ``write_stdlib_corpus()`` writes them to one file. This is the main job's default corpus.
* ``stdlib_source_docs(max_bytes)`` returns whole ``*.py``/``*.txt``/``*.rst`` files (sorted by path,
  site-packages excluded, non-UTF-8 files skipped), one document per file: the ~20 MB corpus of the
  tokenizer benchmark and the vocab-size experiment.

What it does not do: clean, deduplicate or normalise the text beyond dedenting docstrings.
"""

from __future__ import annotations

import ast
import inspect
import os
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from nanoforge.tokenizer.io import write_atomic

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def stdlib_dir() -> Path:
    """Directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _python_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def _docstrings(source: str) -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old escape sequences in some stdlib files
        tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and len(doc.strip()) > 40:
                yield inspect.cleandoc(doc)


def stdlib_docstrings(root: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Yield docstrings (module, class, function) of every stdlib ``.py`` file, in a fixed order.

    Args:
        root: the directory to walk; default: the running interpreter's standard library.
    """
    for path in _python_files(Path(root) if root is not None else stdlib_dir()):
        try:
            yield from _docstrings(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue


def write_stdlib_corpus(out: str | os.PathLike[str], *, max_bytes: int | None = None) -> int:
    """Write the docstring corpus to ``out`` (documents separated by blank lines); return bytes written.

    The file is written atomically, so ``out`` is never half-written.
    """
    parts, written = [], 0
    for doc in stdlib_docstrings():
        data = (doc + "\n\n").encode("utf-8")
        if max_bytes is not None and written + len(data) > max_bytes:
            break
        parts.append(data)
        written += len(data)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out), b"".join(parts))
    return written


def stdlib_source_docs(max_bytes: int) -> list[str]:
    """The first ``max_bytes`` of stdlib ``*.py``/``*.txt``/``*.rst`` files (sorted by path), one doc per file."""
    root = stdlib_dir()
    files = sorted(p for ext in ("*.py", "*.txt", "*.rst") for p in root.rglob(ext))
    docs, total = [], 0
    for path in files:
        if "site-packages" in path.parts or not path.is_file():
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    return docs
