"""The SQLite store of a collection (``store.sqlite``): schema and every SQL statement ``Collection`` runs.

Tables: ``meta`` (key/value: ``generation``, ``next_chunk_id``), ``documents`` (full text and metadata;
the source of truth) and ``chunks`` (character spans into their document's text, heading context and the
parent span of parent-child chunks). Chunk text is never stored twice: SQLite cuts it out with ``substr``.

What it does: opens the database (WAL, ``synchronous=FULL``, autocommit mode so the caller controls
``BEGIN IMMEDIATE`` / ``COMMIT``), and reads and writes rows.
What it deliberately does not do: open or commit transactions, touch FAISS, BM25 or the manifest (the
commit protocol lives in ``collection.py``), or lock (``Collection`` holds its lock around every call).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nanoforge.retriever.chunking import Chunk
from nanoforge.retriever.documents import Document

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, source TEXT NOT NULL, text TEXT NOT NULL,
    metadata TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, idx INTEGER NOT NULL, start INTEGER NOT NULL,
    "end" INTEGER NOT NULL, context TEXT NOT NULL, parent_start INTEGER, parent_end INTEGER);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
"""

#: Most ids bound in one ``IN (...)`` (SQLite's default limit on host parameters is 999).
_BATCH = 500

#: A ``chunks`` row: id, doc_id, idx, start, end, context, parent_start, parent_end.
ChunkRow = tuple[int, str, int, int, int, str, int | None, int | None]


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the store at ``path``: WAL, full fsync, autocommit, schema applied."""
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


def get_meta(db: sqlite3.Connection, key: str, default: str) -> str:
    """The ``meta`` value of ``key``, or ``default``."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    """Set the ``meta`` value of ``key``."""
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def chunk_ids_of(db: sqlite3.Connection, doc_ids: Sequence[str]) -> list[int]:
    """Ids of every chunk of the given documents."""
    out: list[int] = []
    for i in range(0, len(doc_ids), _BATCH):
        part = list(doc_ids[i : i + _BATCH])
        marks = ",".join("?" * len(part))
        out += [r[0] for r in db.execute(f"SELECT id FROM chunks WHERE doc_id IN ({marks})", part)]
    return out


def replace_documents(
    db: sqlite3.Connection,
    docs: Sequence[Document],
    per_doc: Sequence[Sequence[Chunk]],
    first_chunk_id: int,
    now: float,
) -> list[ChunkRow]:
    """Replace the documents (and all their chunks) with ``docs`` and ``per_doc``; return the chunk rows.

    New chunks get consecutive ids from ``first_chunk_id``, in ``per_doc`` order.
    """
    db.executemany("DELETE FROM chunks WHERE doc_id = ?", [(d.id,) for d in docs])
    rows: list[ChunkRow] = []
    cid = first_chunk_id
    for d, chunks in zip(docs, per_doc, strict=True):
        db.execute(
            "INSERT OR REPLACE INTO documents (id, title, source, text, metadata, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (d.id, d.title, d.source, d.text, json.dumps(d.metadata, sort_keys=True), now),
        )
        for idx, c in enumerate(chunks):
            ps, pe = c.parent if c.parent else (None, None)
            rows.append((cid, d.id, idx, c.start, c.end, c.context, ps, pe))
            cid += 1
    db.executemany(
        'INSERT INTO chunks (id, doc_id, idx, start, "end", context, parent_start, parent_end) '
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return rows


def delete_documents(db: sqlite3.Connection, doc_ids: Sequence[str]) -> None:
    """Delete the documents and their chunks."""
    db.executemany("DELETE FROM chunks WHERE doc_id = ?", [(i,) for i in doc_ids])
    db.executemany("DELETE FROM documents WHERE id = ?", [(i,) for i in doc_ids])


def document_metadata(db: sqlite3.Connection) -> dict[str, dict[str, str]]:
    """Document id -> its metadata, for every document."""
    return {doc_id: json.loads(meta) for doc_id, meta in db.execute("SELECT id, metadata FROM documents")}


def indexed_chunks(db: sqlite3.Connection) -> list[tuple[int, str, str, str, str]]:
    """(chunk id, doc id, title, heading context, chunk text) of every chunk (to rebuild BM25)."""
    return db.execute(
        'SELECT c.id, c.doc_id, d.title, c.context, substr(d.text, c.start + 1, c."end" - c.start) '
        "FROM chunks c JOIN documents d ON d.id = c.doc_id"
    ).fetchall()


def counts(db: sqlite3.Connection) -> tuple[int, int]:
    """(documents, chunks)."""
    docs = db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
    chunks = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    return int(docs), int(chunks)


def passages(db: sqlite3.Connection, chunk_ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
    """Chunk id -> (doc_id, idx, start, end, title, source, metadata JSON, passage text).

    The passage is the chunk's parent span for parent-child chunks, else the chunk itself.
    """
    rows: dict[int, tuple[Any, ...]] = {}
    for i in range(0, len(chunk_ids), _BATCH):
        part = list(chunk_ids[i : i + _BATCH])
        marks = ",".join("?" * len(part))
        for row in db.execute(
            "SELECT c.id, c.doc_id, c.idx, coalesce(c.parent_start, c.start) AS s, "
            'coalesce(c.parent_end, c."end") AS e, d.title, d.source, d.metadata, '
            'substr(d.text, coalesce(c.parent_start, c.start) + 1, coalesce(c.parent_end, c."end") - '
            "coalesce(c.parent_start, c.start)) FROM chunks c JOIN documents d ON d.id = c.doc_id "
            f"WHERE c.id IN ({marks})",
            part,
        ):
            rows[row[0]] = row[1:]
    return rows
