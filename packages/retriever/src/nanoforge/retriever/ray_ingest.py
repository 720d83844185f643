"""``nanoforge retriever index --ray``: chunking and embedding as Ray Data ``map_batches`` on an actor pool.

What it does: puts the documents in a Ray Dataset (one row = input index + the document as JSON), runs
``map_batches`` with a callable class and ``concurrency=num_actors`` (an actor pool: each actor builds the
chunker and loads the embedder ONCE in its constructor), and returns, in input order, every document's
chunks and the chunk vectors. The caller commits them with ``Collection.upsert_embedded``, so the on-disk
result is the same as the in-process ``Collection.upsert`` (one atomic commit per batch, same ids).
This is the only module of the package that imports ``ray``.

What it deliberately does not do: write the collection from the workers (SQLite and FAISS have one writer,
the driver), start a cluster beyond ``ray.init()`` with defaults when none is running (``RAY_ADDRESS``
picks an existing one), or use the embedding cache (each actor embeds what it is given).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import ray

from nanoforge.retriever.chunking import Chunk, ChunkerSpec, build_chunker
from nanoforge.retriever.collection import embed_text
from nanoforge.retriever.documents import Document
from nanoforge.retriever.embedders import EmbedderSpec, build_embedder


class _ChunkEmbedActor:
    """Map-batches UDF: builds the embedder once per actor, then chunks and embeds batches of documents."""

    def __init__(self, embedder: dict[str, Any], chunker: dict[str, Any]) -> None:
        self.embedder = build_embedder(EmbedderSpec(**embedder))
        self.chunk = build_chunker(ChunkerSpec(**chunker), embed=self.embedder.embed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        docs = [Document(**json.loads(str(s))) for s in batch["doc"]]
        per_doc = [self.chunk(d.text) for d in docs]
        texts = [embed_text(d.title, c.context, c.text) for d, cs in zip(docs, per_doc) for c in cs]
        vecs = self.embedder.embed(texts) if texts else np.zeros((0, self.embedder.dim), np.float32)
        out_chunks, out_vecs, row = [], [], 0
        for cs in per_doc:
            out_chunks.append(json.dumps([[c.start, c.end, c.context, c.parent] for c in cs]))
            out_vecs.append(np.ascontiguousarray(vecs[row : row + len(cs)], dtype=np.float32).tobytes())
            row += len(cs)
        return {
            "index": np.asarray(batch["index"]),
            "chunks": np.asarray(out_chunks, dtype=object),
            "vecs": np.asarray(out_vecs, dtype=object),
        }


def chunk_and_embed_with_ray(
    docs: Sequence[Document],
    embedder: EmbedderSpec,
    chunker: ChunkerSpec,
    dim: int,
    *,
    num_actors: int = 2,
    batch_size: int = 64,
) -> tuple[list[list[Chunk]], np.ndarray]:
    """Chunks of every document and their vectors (N, dim), in input order, computed on Ray actors.

    Raises:
        ValueError: ``num_actors`` or ``batch_size`` below 1.
    """
    if not isinstance(num_actors, int) or num_actors < 1:
        raise ValueError(f"num_actors={num_actors!r} must be an int >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    if not docs:
        return [], np.zeros((0, dim), np.float32)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    rows = [{"index": i, "doc": json.dumps(asdict(d))} for i, d in enumerate(docs)]
    ds = ray.data.from_items(rows).map_batches(
        _ChunkEmbedActor,
        fn_constructor_kwargs={"embedder": asdict(embedder), "chunker": asdict(chunker)},
        batch_size=batch_size,
        concurrency=num_actors,
        batch_format="numpy",
    )
    out = sorted(ds.take_all(), key=lambda r: int(r["index"]))
    per_doc: list[list[Chunk]] = []
    vec_parts = []
    for d, r in zip(docs, out, strict=True):
        spans = json.loads(str(r["chunks"]))
        per_doc.append([Chunk(d.text[s:e], s, e, ctx, tuple(p) if p else None) for s, e, ctx, p in spans])
        vec_parts.append(np.frombuffer(r["vecs"], dtype=np.float32).reshape(len(spans), dim))  # (n_i, D)
    return per_doc, np.concatenate(vec_parts, axis=0) if vec_parts else np.zeros((0, dim), np.float32)


__all__ = ["chunk_and_embed_with_ray"]
