"""The embedded default corpora come from the local standard library, deterministically."""

from __future__ import annotations

from pathlib import Path

from nanoforge.tokenizer.stdlib_corpus import stdlib_docstrings, stdlib_source_docs, write_stdlib_corpus


def test_docstring_corpus_is_capped_deterministic_and_text(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    n = write_stdlib_corpus(a, max_bytes=50_000)
    assert 10_000 < n <= 50_000
    assert a.stat().st_size == n
    write_stdlib_corpus(b, max_bytes=50_000)
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
    text = a.read_text(encoding="utf-8")
    assert "\n\n" in text and "def " not in text.split("\n\n")[0][:4]


def test_docstrings_come_from_ast_not_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "mod.py").write_text(
        '"""Module docstring long enough to be kept by the corpus builder."""\n'
        "raise SystemExit('importing this file would exit')\n"
        "def f():\n    '''Function docstring that is also longer than forty characters.'''\n",
        encoding="utf-8",
    )
    (pkg / "broken.py").write_text("def (:\n", encoding="utf-8")
    docs = list(stdlib_docstrings(pkg))
    assert docs == [
        "Module docstring long enough to be kept by the corpus builder.",
        "Function docstring that is also longer than forty characters.",
    ]


def test_source_docs_reach_the_requested_size() -> None:
    docs = stdlib_source_docs(200_000)
    assert sum(len(d.encode("utf-8")) for d in docs) >= 200_000
    assert docs == stdlib_source_docs(200_000)
