"""Dense vector index over FAISS with int64 ids, filtered search, upsert and delete, atomic save.

Kinds (the ``INDEX_BUILDERS`` registry; all use inner product on unit vectors = cosine similarity):

- ``flat``: ``IndexIDMap2(IndexFlatIP)`` — exact; deletes with ``remove_ids``.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)`` — graph search (M=32, efSearch=64 by default). HNSW cannot remove
  vectors, so a delete leaves a *tombstone*: the id stays in FAISS but is excluded from every search with an
  ``IDSelectorNot``; when tombstones exceed ``COMPACT_FRACTION`` of the index, the index is rebuilt from the
  live vectors (``reconstruct``). Tombstones are not stored separately: they are exactly the FAISS ids that
  the document store no longer has (``Collection`` computes them on open).
- ``ivf`` / ``ivfpq``: ``IndexIVFFlat`` / ``IndexIVFPQ`` with native ids and ``remove_ids``. They are trained
  on the first batch added (nlist is lowered to ``n // 39`` when the batch is small, and PQ bits to what
  the batch supports), so make that batch representative.

Metadata filters arrive as the set of allowed ids and become an ``IDSelectorBatch`` passed in the search
parameters, so filtering happens inside FAISS (no over-fetch-and-drop).

What it deliberately does not do: GPU indexes, or persistence beyond ``save``/``load`` of one file
(the ``Collection`` decides file names and generations).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import faiss
import numpy as np

#: Rebuild an HNSW index when this fraction of its vectors are tombstones.
COMPACT_FRACTION = 0.25


@dataclass(frozen=True)
class IndexSpec:
    """Dense index settings (stored in the manifest).

    Attributes:
        kind: a key of ``INDEX_BUILDERS``.
        hnsw_m: HNSW graph degree.
        ef_search: HNSW candidate list size at query time.
        nlist: IVF cells (upper bound; lowered for small first batches).
        nprobe: IVF cells visited per query.
        pq_m: PQ sub-quantizers for ``ivfpq`` (must divide the dimension).
    """

    kind: str = "flat"
    hnsw_m: int = 32
    ef_search: int = 64
    nlist: int = 256
    nprobe: int = 16
    pq_m: int = 16
    extra: dict[str, str] = field(default_factory=dict)


def _flat(spec: IndexSpec, dim: int, train: np.ndarray | None) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _hnsw(spec: IndexSpec, dim: int, train: np.ndarray | None) -> faiss.Index:
    inner = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = max(40, 2 * spec.hnsw_m)
    return faiss.IndexIDMap2(inner)


def _ivf(spec: IndexSpec, dim: int, train: np.ndarray | None) -> faiss.Index:
    assert train is not None
    nlist = max(1, min(spec.nlist, len(train) // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    return index


def _ivfpq(spec: IndexSpec, dim: int, train: np.ndarray | None) -> faiss.Index:
    assert train is not None
    if dim % spec.pq_m:
        raise ValueError(f"ivfpq needs pq_m dividing the dimension {dim}, got pq_m={spec.pq_m}")
    nlist = max(1, min(spec.nlist, len(train) // 39))
    nbits = max(1, min(8, int(math.log2(max(2, len(train) // 4)))))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, spec.pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    return index


#: Index kind -> builder(spec, dim, training vectors or None) -> FAISS index accepting add_with_ids.
INDEX_BUILDERS: dict[str, Callable[[IndexSpec, int, np.ndarray | None], faiss.Index]] = {
    "flat": _flat,
    "hnsw": _hnsw,
    "ivf": _ivf,
    "ivfpq": _ivfpq,
}
_NEEDS_TRAINING = frozenset({"ivf", "ivfpq"})
_TOMBSTONED = frozenset({"hnsw"})


def _ids(values: Iterable[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.int64)


class DenseIndex:
    """A FAISS index of unit vectors keyed by int64 chunk ids."""

    def __init__(self, spec: IndexSpec, dim: int, index: faiss.Index | None = None) -> None:
        if spec.kind not in INDEX_BUILDERS:
            raise ValueError(f"unknown index kind {spec.kind!r}; known: {', '.join(INDEX_BUILDERS)}")
        self.spec = spec
        self.dim = dim
        self.index = index
        if self.index is None and spec.kind not in _NEEDS_TRAINING:
            self.index = INDEX_BUILDERS[spec.kind](spec, dim, None)
        self.tombstones: set[int] = set()

    @property
    def ntotal(self) -> int:
        """Vectors held by FAISS, tombstones included."""
        return 0 if self.index is None else int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """Every id held by FAISS (tombstones included)."""
        if self.index is None:
            return np.zeros(0, dtype=np.int64)
        if isinstance(self.index, faiss.IndexIDMap2 | faiss.IndexIDMap):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        ivf = cast(faiss.IndexIVF, self.index)  # the other kinds are ID maps (above); ivf/ivfpq are IVFs
        inv = ivf.invlists
        assert inv is not None  # an IndexIVF always holds its inverted lists
        parts = [
            faiss.rev_swig_ptr(inv.get_ids(c), inv.list_size(c)).copy()
            for c in range(ivf.nlist)
            if inv.list_size(c)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add vectors (shape (N, dim), unit norm) under new ids."""
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (N, {self.dim}), got {tuple(vecs.shape)}")
        if len(ids) == 0:
            return
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if self.index is None:  # IVF: train on the first batch
            self.index = INDEX_BUILDERS[self.spec.kind](self.spec, self.dim, vecs)
        self.index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: Iterable[int]) -> None:
        """Remove ids (HNSW: tombstone them, compacting when there are many)."""
        ids_arr = _ids(ids)
        if self.index is None or len(ids_arr) == 0:
            return
        if self.spec.kind in _TOMBSTONED:
            self.tombstones.update(int(i) for i in ids_arr)
            if len(self.tombstones) > COMPACT_FRACTION * max(1, self.ntotal):
                self.compact()
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(ids_arr))

    def compact(self) -> None:
        """Rebuild without tombstoned vectors (HNSW)."""
        if self.index is None or not self.tombstones:
            return
        live = _ids(i for i in self.ids().tolist() if i not in self.tombstones)
        vecs = np.stack([self.index.reconstruct(int(i)) for i in live]) if len(live) else None
        self.index = INDEX_BUILDERS[self.spec.kind](self.spec, self.dim, None)
        if vecs is not None:
            self.index.add_with_ids(vecs, live)
        self.tombstones.clear()

    def _params(self, allowed: np.ndarray | None, k: int) -> faiss.SearchParameters:
        sel: faiss.IDSelector | None = None
        if allowed is not None:
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        elif self.tombstones:
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(_ids(self.tombstones)))
        if self.spec.kind == "hnsw":
            # faiss's stubs lack SearchParametersHNSW and the keyword constructors SWIG provides at run time
            params = faiss.SearchParametersHNSW(efSearch=max(self.spec.ef_search, k))  # type: ignore[attr-defined]
        elif self.spec.kind in _NEEDS_TRAINING:
            params = faiss.SearchParametersIVF(nprobe=self.spec.nprobe)  # type: ignore[call-arg]
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
            params._keep = sel  # keep the selector alive as long as the params (SWIG does not)
        return params

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row, shapes (Q, k); missing slots have id -1.

        Args:
            queries: (Q, dim) unit vectors.
            k: neighbours per query.
            allowed: when given, only these ids may be returned (a metadata filter).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)  # (Q, D)
        if self.index is None or self.index.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            return np.zeros((len(q), k), np.float32), np.full((len(q), k), -1, np.int64)
        scores, ids = self.index.search(q, k, params=self._params(allowed, k))
        return scores, ids

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically (temp file in the same dir, fsync, rename)."""
        index = self.index if self.index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, spec: IndexSpec, dim: int, path: Path) -> DenseIndex:
        """Read an index written by ``save`` (FAISS's own format; never pickle)."""
        index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"{path}: index dimension {index.d} != manifest dimension {dim}")
        if spec.kind in _NEEDS_TRAINING and isinstance(index, faiss.IndexIDMap2) and index.ntotal == 0:
            return cls(spec, dim, None)  # an empty placeholder written before the IVF was trained
        return cls(spec, dim, index)
