"""Shared fixtures for the retriever tests: tiny corpora in tmp_path, hash-embedder collections."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoforge.retriever.chunking import ChunkerSpec
from nanoforge.retriever.dense import IndexSpec
from nanoforge.retriever.documents import Document
from nanoforge.retriever.embedders import EmbedderSpec
from nanoforge.retriever.library import Library

#: A tiny corpus with distinct topics and metadata, so rankings have a clear right answer.
CORPUS = [
    Document("cats", "Cats are small domesticated felines. A cat purrs and hunts mice at night.", "Cats",
             "zoo/cats.txt", {"lang": "en", "kind": "animal"}),
    Document("dogs", "Dogs are loyal companions. A dog barks, fetches sticks and guards the house.", "Dogs",
             "zoo/dogs.txt", {"lang": "en", "kind": "animal"}),
    Document("faiss", "FAISS is a library for efficient similarity search of dense vectors with HNSW and IVF.",
             "FAISS", "docs/faiss.md", {"lang": "en", "kind": "software"}),
    Document("sqlite", "SQLite is an embedded SQL database engine; WAL mode allows readers during a write.",
             "SQLite", "docs/sqlite.md", {"lang": "en", "kind": "software"}),
    Document("chats", "Les chats sont de petits félins domestiques qui chassent les souris.", "Chats",
             "zoo/chats.txt", {"lang": "fr", "kind": "animal"}),
]  # fmt: skip


@pytest.fixture
def corpus() -> list[Document]:
    return list(CORPUS)


@pytest.fixture
def library(tmp_path: Path) -> Library:
    lib = Library(tmp_path / "root")
    yield lib
    lib.close()


@pytest.fixture
def make_collection(library: Library):
    """Build a hash-embedder collection: make_collection(name, index="flat", chunker=ChunkerSpec(...))."""

    def make(name: str = "zoo", index: str = "flat", chunker: ChunkerSpec | None = None, dim: int = 128):
        return library.create(name, EmbedderSpec("hash", dim=dim), chunker or ChunkerSpec("recursive", 32, 0),
                              IndexSpec(index, nlist=4, pq_m=8))  # fmt: skip

    return make
