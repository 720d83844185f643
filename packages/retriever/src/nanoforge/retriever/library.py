"""A root directory of named collections: create, open (cached), list and delete them by name.

What it does: maps ``name`` -> ``<root>/<name>/`` (names are ``[a-z0-9_-]{1,64}``), keeps opened
collections in memory so a server reuses its FAISS/BM25 state, and deletes a collection by renaming its
directory aside first (atomic) and then removing it.

What it deliberately does not do: access control or quotas.
"""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from nanoforge.retriever.chunking import ChunkerSpec
from nanoforge.retriever.collection import Collection
from nanoforge.retriever.dense import IndexSpec
from nanoforge.retriever.embedders import Embedder, EmbedderSpec

_NAME = re.compile(r"[a-z0-9_-]{1,64}")


def check_name(name: str) -> str:
    """Return ``name`` if valid, else raise ``ValueError`` saying what is accepted."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"bad collection name {name!r}: expected 1-64 characters from [a-z0-9_-]")
    return name


class CollectionNotFoundError(KeyError):
    """No collection of that name (the service maps it to NOT_FOUND)."""

    grpc_status = "NOT_FOUND"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "collection not found"


class CollectionExistsError(FileExistsError):
    """A collection of that name exists (the service maps it to ALREADY_EXISTS)."""

    grpc_status = "ALREADY_EXISTS"


class Library:
    """Collections under one root directory.

    Args:
        root: directory holding one sub-directory per collection (created if missing).
        embedder_factory: builds an embedder from a spec; lets a server share one model between collections.
    """

    def __init__(
        self, root: str | Path, embedder_factory: Callable[[EmbedderSpec], Embedder] | None = None
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, Collection] = {}
        self._lock = threading.Lock()
        self._factory = embedder_factory

    def names(self) -> list[str]:
        """Names of the collections on disk, sorted."""
        return sorted(
            p.name for p in self.root.iterdir() if (p / "manifest.json").is_file() and _NAME.fullmatch(p.name)
        )

    def exists(self, name: str) -> bool:
        return (self.root / check_name(name) / "manifest.json").is_file()

    def _instance(self, spec: EmbedderSpec) -> Embedder | None:
        return self._factory(spec) if self._factory is not None else None

    def create(
        self,
        name: str,
        embedder: EmbedderSpec,
        chunker: ChunkerSpec | None = None,
        index: IndexSpec | None = None,
        description: str = "",
        exist_ok: bool = False,
    ) -> Collection:
        """Create a collection (or return the existing one when ``exist_ok``).

        Raises:
            CollectionExistsError: when it exists and not ``exist_ok``.
        """
        check_name(name)
        with self._lock:
            if self.exists(name):
                if exist_ok:
                    return self._get(name)
                raise CollectionExistsError(f"collection {name!r} already exists")
            col = Collection.create(
                self.root / name, embedder=embedder, chunker=chunker, index=index, description=description,
                embedder_instance=self._instance(embedder),
            )  # fmt: skip
            self._open[name] = col
            return col

    def _get(self, name: str) -> Collection:
        if name not in self._open:
            if not self.exists(name):
                raise CollectionNotFoundError(
                    f"unknown collection {name!r}; existing: {', '.join(self.names()) or 'none'}"
                )
            col = Collection.open(self.root / name)
            col._embedder_inner = self._instance(col.embedder_spec)
            self._open[name] = col
        return self._open[name]

    def get(self, name: str) -> Collection:
        """The open collection ``name``.

        Raises:
            CollectionNotFoundError: if it does not exist.
        """
        check_name(name)
        with self._lock:
            return self._get(name)

    def delete(self, name: str) -> int:
        """Delete a collection; returns how many documents it held.

        Raises:
            CollectionNotFoundError: if it does not exist.
        """
        check_name(name)
        with self._lock:
            col = self._get(name)
            n_docs = int(col.stats()["documents"])
            col.close()
            self._open.pop(name, None)
            trash = self.root / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
            (self.root / name).rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
            return n_docs

    def close(self) -> None:
        with self._lock:
            for col in self._open.values():
                col.close()
            self._open.clear()
