"""``index --ray``: chunking + embedding on a Ray Data actor pool gives the same collection as in-process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nanoforge.retriever.chunking import ChunkerSpec, build_chunker
from nanoforge.retriever.cli import group
from nanoforge.retriever.collection import embed_text
from nanoforge.retriever.embedders import EmbedderSpec, build_embedder
from nanoforge.retriever.library import Library


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray per test session, reused when another package's tests already started it."""
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return ray


@pytest.mark.ray
def test_ray_ingest_equals_in_process(local_ray, corpus, tmp_path: Path) -> None:
    from nanoforge.retriever.ray_ingest import chunk_and_embed_with_ray

    spec, emb = ChunkerSpec("parent_child", 8, 2, parent_tokens=16), EmbedderSpec("hash", dim=64)
    per_doc, vecs = chunk_and_embed_with_ray(corpus, emb, spec, 64, num_actors=2, batch_size=2)
    chunk = build_chunker(spec)
    want = [chunk(d.text) for d in corpus]
    assert per_doc == want and sum(map(len, want)) > len(corpus)  # several chunks per document, with parents
    texts = [embed_text(d.title, c.context, c.text) for d, cs in zip(corpus, want) for c in cs]
    np.testing.assert_array_equal(vecs, build_embedder(emb).embed(texts))

    docs = tmp_path / "docs"
    docs.mkdir()
    for d in corpus:
        (docs / f"{d.id}.txt").write_text(d.text)
    runner = CliRunner()
    for name, extra in (("plain", []), ("viaray", ["--ray", "--ray-actors", "2"])):
        args = ["index", "--collection", name, "--input", str(docs), "--embedder", "hash", "--chunk-size", "8",
                "--root", str(tmp_path / "root"), *extra]  # fmt: skip
        res = runner.invoke(group, args)
        assert res.exit_code == 0, res.output
    lib = Library(tmp_path / "root")
    a, b = lib.get("plain"), lib.get("viaray")
    assert {k: v for k, v in a.stats().items() if k in ("documents", "chunks", "faiss_vectors")} == {
        k: v for k, v in b.stats().items() if k in ("documents", "chunks", "faiss_vectors")
    }
    for q in ("cats hunt mice", "vector search", "SQL database"):
        assert a.search(q, mode="hybrid", k=3) == b.search(q, mode="hybrid", k=3)
    lib.close()
