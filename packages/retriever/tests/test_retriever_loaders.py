"""Loaders: text, Markdown, HTML, PDF, JSONL and BEIR files become documents with source and title."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanoforge.retriever.documents import (
    html_to_text,
    load_beir_qrels,
    load_beir_queries,
    load_path,
)


def _pdf_bytes(pages: list[str]) -> bytes:
    """A minimal valid PDF with one Helvetica text line per page (offsets computed for the xref table)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for i, text in enumerate(pages):
        page_id, content_id = 3 + 2 * i, 4 + 2 * i
        kids.append(f"{page_id} 0 R")
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
                    f"/Resources << /Font << /F1 {3 + 2 * len(pages)} 0 R >> >> >>")  # fmt: skip
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    objs.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = b"%PDF-1.4\n"
    offsets = []
    for n, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_text_markdown_html(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain words")
    (tmp_path / "b.md").write_text("intro\n# The Title\nbody")
    (tmp_path / "c.html").write_text(
        "<html><head><title>Page</title><style>p{}</style></head><body><p>Hello &amp; bye</p>"
        "<script>var x=1;</script><div>second</div></body></html>"
    )
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    docs = {d.source.rsplit("/", 1)[-1]: d for d in load_path(tmp_path)}
    assert set(docs) == {"a.txt", "b.md", "c.html"}
    assert docs["a.txt"].text == "plain words" and docs["a.txt"].title == "a"
    assert docs["b.md"].title == "The Title" and docs["b.md"].metadata["format"] == "markdown"
    assert docs["c.html"].text == "Hello & bye\n\nsecond" and docs["c.html"].title == "Page"


def test_html_to_text_drops_hidden_content() -> None:
    assert html_to_text("<p>a</p><noscript>x</noscript><p>b</p>") == ("a\n\nb", "")


def test_pdf_pages_and_offsets(tmp_path: Path) -> None:
    pytest.importorskip("pypdf")
    (tmp_path / "doc.pdf").write_bytes(_pdf_bytes(["First page text", "Second page text"]))
    [doc] = list(load_path(tmp_path / "doc.pdf"))
    assert "First page text" in doc.text and "Second page text" in doc.text
    assert doc.metadata["pages"] == "2"
    second = int(doc.metadata["page_starts"].split(",")[1])
    assert doc.text[second:].startswith("Second page text")


def test_jsonl_and_beir(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text(
        json.dumps({"_id": "d1", "title": "T", "text": "hello", "metadata": {"year": 2020}})
        + "\n\n"
        + json.dumps({"text": "no id here"})
        + "\n"
    )
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "hi?"}) + "\n")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    docs = list(load_path(tmp_path))  # a dir with corpus.jsonl is a BEIR dataset
    assert docs[0].id == "d1" and docs[0].metadata == {"year": "2020"} and docs[0].source.endswith("#1")
    assert len(docs[1].id) == 64  # sha256 of the text
    assert load_beir_queries(tmp_path / "queries.jsonl") == {"q1": "hi?"}
    assert load_beir_qrels(tmp_path / "qrels.tsv") == {"q1": {"d1": 1}}


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        list(load_path(tmp_path / "missing.txt"))
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(ValueError, match=r"unknown suffix '.docx'; known: .htm"):
        list(load_path(tmp_path / "x.docx"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl#2: not valid JSON"):
        list(load_path(tmp_path / "bad.jsonl"))
    (tmp_path / "bad2.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match="expected a string field 'text', got int"):
        list(load_path(tmp_path / "bad2.jsonl"))
