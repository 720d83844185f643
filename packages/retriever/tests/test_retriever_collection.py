"""Collections: upsert/replace/delete, filters, parent-child, reopen, and crash safety under SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nanoforge.retriever.chunking import ChunkerSpec
from nanoforge.retriever.collection import Collection
from nanoforge.retriever.documents import MAX_DOCUMENT_CHARS, Document
from nanoforge.retriever.search import MetadataFilter


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_upsert_search_modes(make_collection, corpus, index: str) -> None:
    col = make_collection(index=index)
    res = col.upsert(corpus)
    assert res.document_ids == [d.id for d in corpus] and res.chunks_written >= len(corpus)
    for mode in ("dense", "bm25", "hybrid"):
        hits = col.search("which library does similarity search of dense vectors", mode=mode, k=3)
        assert hits[0].document_id == "faiss", mode
        assert hits[0].text == corpus[2].text[hits[0].start : hits[0].end]
        assert hits[0].title == "FAISS" and hits[0].source == "docs/faiss.md"
    by_id = {d.id: d for d in corpus}
    for h in col.search("petits félins domestiques souris", k=5):  # non-ASCII offsets are code points
        assert h.text == by_id[h.document_id].text[h.start : h.end]
    hybrid = col.search("cat purrs mice", k=5)
    assert hybrid[0].document_id == "cats"
    assert hybrid[0].dense_score > 0 and hybrid[0].bm25_score > 0


def test_replace_and_delete_keep_counts_consistent(make_collection, corpus) -> None:
    col = make_collection(index="hnsw")
    col.upsert(corpus)
    res = col.upsert([Document("cats", "Cats now only sleep all day long.", "Cats v2")])
    assert res.chunks_replaced == 1 and res.chunks_written == 1
    hit = col.search("sleep all day", k=1)[0]
    assert hit.document_id == "cats" and hit.title == "Cats v2"
    assert col.delete(["dogs", "unknown"]) == (1, 1)
    assert col.delete(filters=[MetadataFilter("lang", "eq", ("fr",))]) == (1, 1)
    st = col.stats()
    assert st["documents"] == 3 and st["chunks"] == st["faiss_live"] == st["bm25_chunks"] == 3
    assert all(h.document_id not in ("dogs", "chats") for h in col.search("dog barks chats", k=5))


def test_metadata_filters(make_collection, corpus) -> None:
    col = make_collection()
    col.upsert(corpus)
    cases = {
        ("kind", "eq", ("software",)): {"faiss", "sqlite"},
        ("lang", "ne", ("en",)): {"chats"},
        ("lang", "in", ("fr", "de")): {"chats"},
        ("kind", "not_in", ("animal",)): {"faiss", "sqlite"},
        ("source", "prefix", ("zoo/",)): set(),  # source is not metadata: nothing matches
    }
    for (key, op, values), expected in cases.items():
        for mode in ("dense", "bm25", "hybrid"):
            hits = col.search(
                "cats dogs vectors database", mode=mode, k=10, filters=[MetadataFilter(key, op, values)]
            )
            assert {h.document_id for h in hits} <= expected, (key, op, mode)
            if expected and mode != "bm25":
                assert {h.document_id for h in hits} == expected
    with pytest.raises(ValueError, match="unknown filter operator 'gt'"):
        col.search("x", filters=[MetadataFilter("a", "gt", ("1",))])
    with pytest.raises(ValueError, match="takes exactly one value, got 2"):
        col.search("x", filters=[MetadataFilter("a", "eq", ("1", "2"))])


def test_parent_child_returns_parent_once(make_collection) -> None:
    col = make_collection("pc", chunker=ChunkerSpec("parent_child", 8, 0, parent_tokens=40))
    text = "Intro words here.\n\n" + "The quick brown fox jumps over the lazy dog again and again today. " * 2
    col.upsert([Document("d", text)])
    hits = col.search("quick brown fox lazy dog", k=5)
    assert len({(h.start, h.end) for h in hits}) == len(hits)
    assert hits[0].text == text[hits[0].start : hits[0].end] and "quick brown fox" in hits[0].text
    assert len(hits[0].text.split()) > 8  # the parent, not the 8-token child


def test_bad_input_errors(make_collection) -> None:
    col = make_collection()
    with pytest.raises(ValueError, match="has empty text"):
        col.upsert([Document("e", "")])
    with pytest.raises(ValueError, match=f"the limit is {MAX_DOCUMENT_CHARS}"):
        col.upsert([Document("big", "x" * (MAX_DOCUMENT_CHARS + 1))])
    with pytest.raises(ValueError, match="query must not be empty"):
        col.search("  ")
    with pytest.raises(ValueError, match=r"k must be in \[1, 1000\], got 0"):
        col.search("x", k=0)
    with pytest.raises(ValueError, match="unknown search mode 'fuzzy'"):
        col.search("x", mode="fuzzy")


def test_reopen_gives_same_results(make_collection, corpus, library) -> None:
    col = make_collection(index="hnsw")
    col.upsert(corpus)
    col.delete(["dogs"])
    before = [(h.chunk_id, round(h.score, 5)) for h in col.search("cats and databases", k=4)]
    path = col.path
    library.close()
    again = Collection.open(path)
    assert [(h.chunk_id, round(h.score, 5)) for h in again.search("cats and databases", k=4)] == before
    st = again.stats()
    assert st["chunks"] == st["faiss_live"] == st["bm25_chunks"] and st["tombstones"] == 1
    assert sorted(p.name for p in path.glob("index-*")) == [f"index-{st['generation']}.faiss"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["generation"] == st["generation"] and manifest["dimension"] == 128
    assert manifest["embedder"]["kind"] == "hash" and manifest["chunker"]["strategy"] == "recursive"
    again.close()


def test_failed_commit_rolls_back(make_collection, corpus, monkeypatch) -> None:
    col = make_collection()
    col.upsert(corpus[:2])

    def boom(path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(col.dense, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        col.upsert(corpus[2:])
    st = col.stats()
    assert st["documents"] == 2 and st["chunks"] == st["faiss_live"] == st["bm25_chunks"]


_CHILD = textwrap.dedent(
    """
    import sys, time
    from nanoforge.retriever.chunking import ChunkerSpec
    from nanoforge.retriever.dense import DenseIndex, IndexSpec
    from nanoforge.retriever.documents import Document
    from nanoforge.retriever.embedders import EmbedderSpec
    from nanoforge.retriever.library import Library

    root, index, stall = sys.argv[1], sys.argv[2], sys.argv[3] == "stall"
    col = Library(root).create("crash", EmbedderSpec("hash", dim=32), ChunkerSpec("fixed", 8, 0), IndexSpec(index))
    if stall:  # stop inside the commit window: new FAISS file written, SQLite not yet committed
        save = DenseIndex.save
        def slow_save(self, path):
            save(self, path)
            if "index-3" in path.name:
                print("saved", path.name, flush=True)
                time.sleep(60)
        DenseIndex.save = slow_save
    for batch in range(1000):
        docs = [Document(f"b{batch}-{i}", f"batch {batch} document {i} " * 6) for i in range(10)]
        col.upsert(docs)
        if batch % 3 == 2:
            col.delete([f"b{batch}-0"])
        print("committed", batch, flush=True)
    """
)


def _run_and_kill(root: Path, index: str, stall: bool, after_lines: int) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root), index, "stall" if stall else "go"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    while len(lines) < after_lines:
        line = proc.stdout.readline()
        assert line, "child exited early"
        lines.append(line.strip())
        if stall and line.startswith("saved"):
            break
    if not stall:
        time.sleep(0.05)  # land somewhere inside the next upsert
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    lines += [x.strip() for x in proc.stdout.read().splitlines()]  # what it printed before dying
    return lines


def _check_consistent(path: Path) -> dict:
    col = Collection.open(path)
    st = col.stats()
    assert st["chunks"] == st["faiss_live"] == st["bm25_chunks"]
    n_ids = col._db.execute("SELECT COUNT(DISTINCT id) FROM chunks").fetchone()[0]
    assert n_ids == st["chunks"]
    assert sorted(p.name for p in path.glob("index-*")) == [f"index-{st['generation']}.faiss"]
    col.upsert([Document("after", "recovered collection still accepts writes")])
    assert col.search("recovered writes", k=1)[0].document_id == "after"
    col.close()
    return st


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_sigkill_inside_commit_window_keeps_last_commit(tmp_path: Path, index: str) -> None:
    lines = _run_and_kill(tmp_path, index, stall=True, after_lines=10)
    assert (
        lines[-1] == "saved index-3.faiss" and "committed 1" in lines
    )  # generations 1, 2 committed (batch 0, 1); 3 in flight
    st = _check_consistent(tmp_path / "crash")
    assert st["generation"] == 2 and st["documents"] == 20  # batches 0 and 1; batch 2 never committed


def test_sigkill_at_random_points_mid_ingest(tmp_path: Path) -> None:
    for round_ in range(3):
        root = tmp_path / f"r{round_}"
        lines = _run_and_kill(root, "flat", stall=False, after_lines=2 + 2 * round_)
        committed = int(lines[-1].split()[1]) + 1
        col = Collection.open(root / "crash")
        docs = col.stats()["documents"]
        col.close()
        # Whole batches only: the last printed one, or the one after it if it committed before the kill.
        deletes = lambda n: n // 3  # noqa: E731 - one delete after every third batch
        assert docs in {10 * committed - deletes(committed), 10 * (committed + 1) - deletes(committed + 1),
                        10 * (committed + 1) - deletes(committed)}  # fmt: skip
        _check_consistent(root / "crash")


def test_hit_offsets_are_code_points_past_non_ascii_text(make_collection) -> None:
    col = make_collection("uni", chunker=ChunkerSpec("fixed", 8, 0))
    text = "été café naïve " * 10 + "cible unique ici"
    col.upsert([Document("u", text)])
    hit = col.search("cible unique", mode="bm25", k=1)[0]
    assert hit.start > 0 and hit.text == text[hit.start : hit.end] and "cible unique" in hit.text
