"""The ``nanoforge retriever`` commands: index, search and eval end to end (hash embedder, tmp dirs)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from nanoforge.cli.main import main
from nanoforge.retriever.cli import group


def _beir(tmp_path: Path) -> Path:
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    docs = [("d1", "Photosynthesis", "Plants turn light into sugar with chlorophyll."),
            ("d2", "Volcanoes", "Magma erupts from volcanoes as lava and ash."),
            ("d3", "Tides", "The moon's gravity pulls the oceans into tides.")]  # fmt: skip
    (d / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs)
    )
    (d / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "how do plants make sugar from light"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "lava and ash from magma"})
        + "\n"
    )
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return d


def test_index_search_eval(tmp_path: Path) -> None:
    runner = CliRunner()
    root = str(tmp_path / "root")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# Cooking\nBoil pasta in salted water for nine minutes.")
    (notes / "b.txt").write_text("Bicycles need air in their tyres.")
    res = runner.invoke(group, ["index", "--collection", "notes", "--input", str(notes), "--embedder", "hash",
                                "--chunker", "markdown", "--root", root])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "indexed 2 documents" in res.output
    res = runner.invoke(
        group, ["search", "--collection", "notes", "--query", "pasta water", "--root", root, "--json"]
    )
    assert res.exit_code == 0, res.output
    first = json.loads(res.output.splitlines()[0])
    assert first["title"] == "Cooking" and "pasta" in first["text"]

    beir = _beir(tmp_path)
    report = tmp_path / "rep"
    res = runner.invoke(group, ["eval", "--corpus", str(beir), "--embedder", "hash", "--chunk-tokenizer", "words",
                                "--root", root, "--report", str(report)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "bm25" in res.output and "ndcg@10=" in res.output
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["bm25"]["metrics"]["recall@1"] == 1.0  # both queries share their key words with their doc


def test_errors_are_one_line(tmp_path: Path, capsys) -> None:
    code = main(["retriever", "search", "--collection", "ghost", "--query", "x", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: unknown collection 'ghost'") and "Traceback" not in err
    code = main(["retriever", "index", "--collection", "BAD!", "--input", str(tmp_path), "--embedder", "hash",
                 "--root", str(tmp_path)])  # fmt: skip
    assert code == 1 and "bad collection name 'BAD!'" in capsys.readouterr().err
