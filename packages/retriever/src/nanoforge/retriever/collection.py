"""A collection on disk: FAISS index + SQLite store + manifest, with crash-safe upsert and delete.

Layout of a collection directory::

    manifest.json        format/version, embedder, chunker, index spec, dimension, committed generation
    store.sqlite         documents, chunks, meta (WAL mode)   <- the source of truth (SQL in ``store.py``)
    index-<gen>.faiss    the dense index of generation <gen>  (faiss.write_index; never pickle)
    embeddings.sqlite    embedding cache keyed by content hash

Commit protocol of one ``upsert``/``delete`` (all or nothing):

1. chunk and embed outside any transaction (the slow part; a crash here changes nothing);
2. ``BEGIN IMMEDIATE``; replace the rows; write ``index-<gen+1>.faiss`` (temp file, fsync, ``os.replace``);
3. set ``meta.generation = gen+1`` in the same transaction and ``COMMIT``   <- the commit point;
4. rewrite ``manifest.json`` atomically, then delete ``index-<gen>.faiss``.

A crash before 3 leaves SQLite at ``gen`` (WAL rollback) and an orphan ``index-<gen+1>.faiss``; a crash
after 3 may leave a stale manifest. ``open`` therefore trusts SQLite's generation, loads that index file,
repairs the manifest and removes orphan files, so reopening always gives the last committed state with
equal chunk counts in SQLite and FAISS (tested by SIGKILL mid-ingest).

Deletes: flat/IVF indexes remove vectors; HNSW keeps tombstones (FAISS ids absent from SQLite, recomputed
on open) and compacts past 25 %. BM25 and the metadata used by filters are held in memory, rebuilt from
SQLite on open. Each chunk is embedded and BM25-indexed as ``title + heading context + chunk text``
(``embed_text``), so short chunks keep the document's subject; hits return the chunk text only.

What it deliberately does not do: multi-process writers (one process owns a collection; SQLite's lock
makes a second writer wait, not corrupt), or distributed indexes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from nanoforge.retriever import store
from nanoforge.retriever.bm25 import BM25Index
from nanoforge.retriever.chunking import Chunk, ChunkerSpec, build_chunker
from nanoforge.retriever.dense import INDEX_BUILDERS, DenseIndex, IndexSpec
from nanoforge.retriever.documents import Document, content_id, validate_document
from nanoforge.retriever.embedders import (
    CachedEmbedder,
    Embedder,
    EmbedderSpec,
    EmbeddingCache,
    build_embedder,
)
from nanoforge.retriever.search import Hit, MetadataFilter, matches, rrf_fuse, validate_filters

FORMAT = "nanoforge-retriever-collection"
FORMAT_VERSION = 1

#: Search modes.
MODES = ("dense", "bm25", "hybrid")


@dataclass(frozen=True)
class UpsertResult:
    """What an upsert did."""

    document_ids: list[str]
    chunks_written: int
    chunks_replaced: int
    embedded_tokens: int


def _versions() -> dict[str, str]:
    out = {"faiss": faiss.__version__}
    try:
        out["nanoforge-retriever"] = version("nanoforge-retriever")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        out["nanoforge-retriever"] = "unknown"
    return out


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to ``path`` via a temp file in the same directory, fsync, and ``os.replace``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def embed_text(title: str, context: str, text: str) -> str:
    """What is embedded and BM25-indexed for a chunk: document title, heading context and chunk text."""
    return "\n".join(part for part in (title, context, text) if part)


class Collection:
    """One collection directory; use ``Collection.create`` or ``Collection.open``."""

    def __init__(self, path: Path, manifest: dict[str, Any], embedder: Embedder | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.name: str = manifest["name"]
        self.chunker_spec = ChunkerSpec(**manifest["chunker"])
        self.embedder_spec = EmbedderSpec(**manifest["embedder"])
        self.index_spec = IndexSpec(**manifest["index"])
        self.dim: int = manifest["dimension"]
        self._lock = threading.RLock()
        self._embedder_inner = embedder
        self._embedder: CachedEmbedder | None = None
        #: Embedding cache file; set it before the first embed to share one cache between collections.
        self.cache_path: Path = path / "embeddings.sqlite"
        self._db = store.connect(path / "store.sqlite")
        self._load_state()

    # --- lifecycle -------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        embedder: EmbedderSpec,
        chunker: ChunkerSpec | None = None,
        index: IndexSpec | None = None,
        description: str = "",
        embedder_instance: Embedder | None = None,
    ) -> Collection:
        """Create an empty collection directory (it must not exist yet).

        Raises:
            FileExistsError: if ``path`` exists.
            ValueError: for unknown chunker/index/embedder kinds.
        """
        p = Path(path)
        if p.exists():
            raise FileExistsError(f"collection directory already exists: {p}")
        chunker = chunker or ChunkerSpec()
        index = index or IndexSpec()
        build_chunker(chunker, embed=lambda texts: np.zeros((len(texts), 1)))  # validates the spec
        if index.kind not in INDEX_BUILDERS:
            raise ValueError(f"unknown index kind {index.kind!r}; known: {', '.join(INDEX_BUILDERS)}")
        inner = embedder_instance or build_embedder(embedder)
        dim = int(inner.dim)
        p.mkdir(parents=True)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": p.name,
            "description": description,
            "embedder": asdict(EmbedderSpec(**{**asdict(embedder), "dim": dim})),
            "embedder_key": inner.key,
            "chunker": asdict(chunker),
            "index": asdict(index),
            "dimension": dim,
            "generation": 0,
            "created_at": time.time(),
            "updated_at": time.time(),
            "versions": _versions(),
        }
        DenseIndex(index, dim).save(p / "index-0.faiss")
        write_json_atomic(p / "manifest.json", manifest)
        return cls(p, manifest, inner)

    @classmethod
    def open(cls, path: str | Path, embedder_instance: Embedder | None = None) -> Collection:
        """Open an existing collection, recovering from any interrupted write.

        Raises:
            FileNotFoundError: if there is no manifest.
            ValueError: for a manifest of another format or version.
        """
        p = Path(path)
        mpath = p / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"not a collection (no manifest.json): {p}")
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{mpath}: format {manifest.get('format')!r} v{manifest.get('format_version')!r} is not "
                f"{FORMAT!r} v{FORMAT_VERSION}"
            )
        return cls(p, manifest, embedder_instance)

    def _load_state(self) -> None:
        """Load the committed generation, repair the manifest, drop orphans, rebuild in-memory indexes."""
        gen = int(store.get_meta(self._db, "generation", "0"))
        self.generation = gen
        self.dense = DenseIndex.load(self.index_spec, self.dim, self.path / f"index-{gen}.faiss")
        if self.manifest.get("generation") != gen:
            self.manifest["generation"] = gen
            write_json_atomic(self.path / "manifest.json", self.manifest)
        for f in self.path.iterdir():
            if (f.name.startswith("index-") and f.name != f"index-{gen}.faiss") or f.name.endswith(
                ".json.tmp"
            ):
                f.unlink(missing_ok=True)
        self._doc_meta: dict[str, dict[str, str]] = store.document_metadata(self._db)
        self._chunk_doc: dict[int, str] = {}
        self.bm25 = BM25Index()
        rows = store.indexed_chunks(self._db)
        for cid, doc_id, *_ in rows:
            self._chunk_doc[cid] = doc_id
        self.bm25.add((cid, embed_text(title, context, text)) for cid, _, title, context, text in rows)
        faiss_ids = set(self.dense.ids().tolist())
        self.dense.tombstones = faiss_ids - set(self._chunk_doc)

    def close(self) -> None:
        """Close the SQLite handles."""
        with self._lock:
            self._db.close()
            if self._embedder is not None and self._embedder.cache is not None:
                self._embedder.cache.close()

    @property
    def embedder(self) -> CachedEmbedder:
        """The collection's embedder, with its SQLite cache (built on first use)."""
        if self._embedder is None:
            inner = self._embedder_inner or build_embedder(self.embedder_spec)
            if inner.key != self.manifest.get("embedder_key", inner.key):
                raise ValueError(
                    f"collection {self.name!r} was built with {self.manifest['embedder_key']!r}, not {inner.key!r}"
                )
            self._embedder = CachedEmbedder(inner, EmbeddingCache(self.cache_path))
        return self._embedder

    # --- stats -----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts from SQLite and FAISS (they agree after every commit; live = FAISS minus tombstones)."""
        with self._lock:
            docs, chunks = store.counts(self._db)
            return {
                "name": self.name,
                "documents": docs,
                "chunks": chunks,
                "faiss_vectors": self.dense.ntotal,
                "faiss_live": self.dense.ntotal - len(self.dense.tombstones),
                "tombstones": len(self.dense.tombstones),
                "bm25_chunks": len(self.bm25),
                "generation": self.generation,
                "dimension": self.dim,
                "created_at": self.manifest["created_at"],
                "updated_at": self.manifest.get("updated_at", self.manifest["created_at"]),
            }

    # --- writes ----------------------------------------------------------------------------------------

    def _commit(self, new_gen: int) -> None:
        """Steps 2b-4 of the protocol (the caller holds an open transaction)."""
        self.dense.save(self.path / f"index-{new_gen}.faiss")
        now = time.time()
        store.set_meta(self._db, "generation", str(new_gen))
        self._db.execute("COMMIT")
        old = self.generation
        self.generation = new_gen
        self.manifest.update(generation=new_gen, updated_at=now)
        write_json_atomic(self.path / "manifest.json", self.manifest)
        (self.path / f"index-{old}.faiss").unlink(missing_ok=True)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        (self.path / f"index-{self.generation + 1}.faiss").unlink(missing_ok=True)
        self._load_state()  # in-memory indexes may be half-updated: reload the committed state

    def upsert(self, docs: Sequence[Document], chunker: ChunkerSpec | None = None) -> UpsertResult:
        """Chunk, embed and index documents, replacing any with the same id, in one atomic commit.

        Raises:
            ValueError: for an empty batch, an empty or oversize document, or a bad chunker spec.
        """
        docs = self.prepare_documents(docs)
        spec = chunker or self.chunker_spec
        chunk_fn = build_chunker(spec, embed=self.embedder.embed)
        per_doc: list[list[Chunk]] = [chunk_fn(d.text) for d in docs]
        texts = [
            embed_text(d.title, c.context, c.text)
            for d, chunks in zip(docs, per_doc, strict=True)
            for c in chunks
        ]
        vecs = self.embedder.embed(texts) if texts else np.zeros((0, self.dim), np.float32)  # (N, D)
        return self.upsert_embedded(docs, per_doc, vecs)

    @staticmethod
    def prepare_documents(docs: Sequence[Document]) -> list[Document]:
        """Give id-less documents their content id and validate them all.

        Raises:
            ValueError: for an empty batch or an empty or oversize document.
        """
        if not docs:
            raise ValueError("upsert needs at least one document")
        docs = [
            d if d.id else Document(content_id(d.text), d.text, d.title, d.source, d.metadata) for d in docs
        ]
        for d in docs:
            validate_document(d)
        return docs

    def upsert_embedded(
        self, docs: Sequence[Document], per_doc: Sequence[Sequence[Chunk]], vecs: np.ndarray
    ) -> UpsertResult:
        """Commit documents whose chunks and chunk vectors (N, D) were computed elsewhere (e.g. on Ray).

        ``vecs`` rows follow ``per_doc`` flattened in order; each row embeds ``embed_text(title, context,
        text)`` of its chunk with this collection's embedder.
        """
        texts = [
            embed_text(d.title, c.context, c.text)
            for d, chunks in zip(docs, per_doc, strict=True)
            for c in chunks
        ]
        if vecs.shape != (len(texts), self.dim):
            raise ValueError(f"expected {len(texts)} vectors of dimension {self.dim}, got shape {vecs.shape}")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                ids = [d.id for d in docs]
                old = store.chunk_ids_of(self._db, ids)
                next_id = int(store.get_meta(self._db, "next_chunk_id", "1"))
                new_ids = np.arange(next_id, next_id + len(texts), dtype=np.int64)
                rows = store.replace_documents(self._db, docs, per_doc, next_id, time.time())
                store.set_meta(self._db, "next_chunk_id", str(next_id + len(texts)))
                self.dense.remove(old)
                self.dense.add(new_ids, vecs)
                self._commit(self.generation + 1)
            except BaseException:
                self._rollback()
                raise
            self.bm25.remove(old)
            self.bm25.add((int(i), t) for i, t in zip(new_ids, texts, strict=True))
            for cid in old:
                self._chunk_doc.pop(cid, None)
            for r in rows:
                self._chunk_doc[r[0]] = r[1]
            for d in docs:
                self._doc_meta[d.id] = dict(d.metadata)
        n_tokens = sum(len(t.split()) for t in texts)
        return UpsertResult(ids, len(texts), len(old), n_tokens)

    def delete(self, doc_ids: Sequence[str] = (), filters: Sequence[MetadataFilter] = ()) -> tuple[int, int]:
        """Delete documents by id, by filter, or both (then both must match). Unknown ids are ignored.

        Returns:
            (documents deleted, chunks deleted).
        """
        validate_filters(filters)
        if not doc_ids and not filters:
            raise ValueError("delete needs document ids, filters, or both")
        with self._lock:
            targets = [d for d in (doc_ids or self._doc_meta) if d in self._doc_meta]
            if filters:
                targets = [d for d in targets if matches(self._doc_meta[d], filters)]
            if not targets:
                return 0, 0
            try:
                self._db.execute("BEGIN IMMEDIATE")
                old = store.chunk_ids_of(self._db, targets)
                store.delete_documents(self._db, targets)
                self.dense.remove(old)
                self._commit(self.generation + 1)
            except BaseException:
                self._rollback()
                raise
            self.bm25.remove(old)
            for cid in old:
                self._chunk_doc.pop(cid, None)
            for d in targets:
                self._doc_meta.pop(d, None)
            return len(targets), len(old)

    # --- search ----------------------------------------------------------------------------------------

    def allowed_ids(self, filters: Sequence[MetadataFilter]) -> np.ndarray | None:
        """Chunk ids whose documents match ``filters`` (None: no filtering)."""
        if not filters:
            return None
        validate_filters(filters)
        docs = {d for d, m in self._doc_meta.items() if matches(m, filters)}
        return np.fromiter((c for c, d in self._chunk_doc.items() if d in docs), dtype=np.int64)

    def search(
        self,
        query: str,
        *,
        mode: str = "hybrid",
        k: int = 5,
        filters: Sequence[MetadataFilter] = (),
        alpha: float = 0.5,
        min_score: float | None = None,
        query_vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """The ``k`` best chunks (or parent passages) for ``query``, best first.

        Args:
            query: the query text (BM25 reads it; dense embeds it unless ``query_vector`` is given).
            mode: ``dense``, ``bm25`` or ``hybrid``.
            k: number of hits, in [1, 1000].
            filters: metadata conditions, all of which a hit's document must meet.
            alpha: weight of the dense ranking in hybrid fusion.
            min_score: drop hits scoring below this.
            query_vector: a precomputed (1, dim) query embedding.

        Raises:
            ValueError: for an empty query, k outside [1, 1000], an unknown mode, bad filters or alpha.
        """
        qv = None if query_vector is None else np.asarray(query_vector, dtype=np.float32).reshape(1, -1)
        return self.search_many(
            [query], mode=mode, k=k, filters=filters, alpha=alpha, min_score=min_score, query_vectors=qv
        )[0]

    def search_many(
        self,
        queries: Sequence[str],
        *,
        mode: str = "hybrid",
        k: int = 5,
        filters: Sequence[MetadataFilter] = (),
        alpha: float = 0.5,
        min_score: float | None = None,
        query_vectors: np.ndarray | None = None,
    ) -> list[list[Hit]]:
        """``search`` for several queries with the same options: one embedding call and one FAISS call.

        This is what the service's micro-batching uses: a batched FAISS search is a matrix product, far
        cheaper per query than one search per query.
        """
        for q in queries:
            if not q or not q.strip():
                raise ValueError("search query must not be empty")
        if not 1 <= k <= 1000:
            raise ValueError(f"k must be in [1, 1000], got {k}")
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; known: {', '.join(MODES)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"hybrid alpha must be in [0, 1], got {alpha}")
        pool = max(4 * k, 50) if mode == "hybrid" or self.chunker_spec.strategy == "parent_child" else k
        n = len(queries)
        with self._lock:
            allowed = self.allowed_ids(filters)
            dense: list[dict[int, float]] = [{} for _ in range(n)]
            bm25: list[dict[int, float]] = [{} for _ in range(n)]
            if mode in ("dense", "hybrid"):
                qv = query_vectors if query_vectors is not None else self.embedder.inner.embed(list(queries))
                scores, ids = self.dense.search(qv, pool, allowed)  # (n, pool) each
                dense = [
                    {int(i): float(sc) for sc, i in zip(scores[r], ids[r], strict=True) if i >= 0}
                    for r in range(n)
                ]
            if mode in ("bm25", "hybrid"):
                bm25 = [dict(self.bm25.search(q, pool, allowed)) for q in queries]
            out = []
            for r in range(n):
                if mode == "dense":
                    ranked = list(dense[r].items())
                elif mode == "bm25":
                    ranked = list(bm25[r].items())
                else:
                    ranked = rrf_fuse(list(dense[r]), list(bm25[r]), alpha)
                out.append(self._hits(ranked, dense[r], bm25[r], k, min_score))
            return out

    def _hits(
        self,
        ranked: list[tuple[int, float]],
        dense: dict[int, float],
        bm25: dict[int, float],
        k: int,
        min_score: float | None,
    ) -> list[Hit]:
        out: list[Hit] = []
        seen: set[tuple[str, int, int]] = set()
        ranked = [(cid, score) for cid, score in ranked if min_score is None or score >= min_score]
        # One query for all candidates; SQLite cuts the passage out (parent span for parent-child chunks).
        rows = store.passages(self._db, [cid for cid, _ in ranked])
        for cid, score in ranked:
            if cid not in rows:
                continue
            doc_id, idx, start, end, title, source, meta, text = rows[cid]
            if (doc_id, start, end) in seen:  # parent-child: each parent passage once
                continue
            seen.add((doc_id, start, end))
            out.append(
                Hit(
                    chunk_id=f"{doc_id}#{idx}", document_id=doc_id, text=text, score=score,
                    dense_score=dense.get(cid, 0.0), bm25_score=bm25.get(cid, 0.0), title=title, source=source,
                    metadata=json.loads(meta), start=start, end=end,
                )
            )  # fmt: skip
            if len(out) == k:
                break
        return out
