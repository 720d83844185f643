"""Embedders: hashing determinism, the SQLite cache, the OpenAI-compatible client, and MiniLM offline."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import typing
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from nanoforge.retriever.embedders import (
    CachedEmbedder,
    EmbedderSpec,
    EmbeddingCache,
    HashingEmbedder,
    OpenAIEmbedder,
    build_embedder,
)


def test_hashing_is_deterministic_normalized_and_lexical() -> None:
    emb = HashingEmbedder(64)
    a = emb.embed(["the cat sat", "the cat sat", "quantum chromodynamics"])
    assert a.shape == (3, 64) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a[0], a[1])
    # Same vector in a fresh process (no reliance on Python's randomized hash()).
    code = "from nanoforge.retriever.embedders import HashingEmbedder; print(HashingEmbedder(64).embed(['the cat sat'])[0].tolist())"
    other = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert np.allclose(other, a[0])
    q = emb.embed(["a cat sat down"])[0]
    assert q @ a[0] > q @ a[2]


def test_cache_embeds_each_text_once_and_persists(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    emb = CachedEmbedder(HashingEmbedder(32), cache, batch_size=2)
    first = emb.embed(["a", "b", "a", "c"])
    assert emb.misses == 3 and len(cache) == 3
    again = emb.embed(["c", "a", "d"])
    assert emb.misses == 4  # only "d" is new
    assert np.array_equal(again[0], first[3]) and np.array_equal(again[1], first[0])
    cache.close()
    reopened = CachedEmbedder(HashingEmbedder(32), EmbeddingCache(tmp_path / "cache.sqlite"))
    reopened.embed(["a", "b", "c", "d"])
    assert reopened.misses == 0
    other_model = CachedEmbedder(HashingEmbedder(16), EmbeddingCache(tmp_path / "cache.sqlite"))
    other_model.embed(["a"])
    assert other_model.misses == 1  # the key includes the embedder: no cross-model hits


class _FakeOpenAI(BaseHTTPRequestHandler):
    seen: typing.ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        data = [{"index": i, "embedding": [float(len(t)), 1.0, 0.0]} for i, t in enumerate(body["input"])]
        payload = json.dumps({"data": list(reversed(data)), "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def test_openai_compatible_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("TEST_EMBED_KEY", "sk-test")
        emb = build_embedder(EmbedderSpec("openai", model="m1", url=f"http://127.0.0.1:{server.server_port}/v1",
                                          api_key_env="TEST_EMBED_KEY"))  # fmt: skip
        out = emb.embed(["ab", "abcd"])
        assert emb.dim == 3
        expected = np.array([[2, 1, 0], [4, 1, 0]], np.float32)
        assert np.allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True))  # order restored
        call = _FakeOpenAI.seen[-1]
        assert call["path"] == "/v1/embeddings" and call["model"] == "m1" and call["auth"] == "Bearer sk-test"
    finally:
        server.shutdown()
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        OpenAIEmbedder("localhost:8000", "m")


def test_unknown_embedder() -> None:
    with pytest.raises(ValueError, match="unknown embedder 'bert'; known: hash, minilm, openai, inference"):
        build_embedder(EmbedderSpec("bert"))


def test_minilm_loads_offline_with_sensible_similarities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = build_embedder(EmbedderSpec("minilm"))
    vecs = emb.embed(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                      "A man is riding a horse."])  # fmt: skip
    assert vecs.shape == (4, 384) and emb.dim == 384
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    # The two eating sentences are the closest pair (sentence-transformers reports 0.7553 for it).
    assert sims[0, 1] == pytest.approx(0.7553, abs=0.01)
    assert sims[0, 1] > sims[0, 3] > sims[0, 2]
