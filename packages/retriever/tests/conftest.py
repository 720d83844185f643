"""Shared fixtures for the retriever tests: tiny corpora in tmp_path, hash-embedder collections."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from nanoforge.api.client import make_sync_channel
from nanoforge.api.retriever.v1 import retriever_pb2_grpc as pb_grpc
from nanoforge.retriever.chunking import ChunkerSpec
from nanoforge.retriever.dense import IndexSpec
from nanoforge.retriever.documents import Document
from nanoforge.retriever.embedders import EmbedderSpec
from nanoforge.retriever.library import Library
from nanoforge.retriever.service import start_server

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


# --- a REAL InferenceService with a tiny random model (for Ask) -----------------------------------------

_MODEL_TEXTS = [
    "Cats are small felines. Dogs bark at night. [1] [2] Not in the documents. " * 3,
    "The quick brown fox jumps over the lazy dog. " * 3,
]


def _build_tiny_model(path: Path) -> Path:
    """A random 2-layer GPT (width 32) with a 300-token BPE tokenizer (ChatML), as ``nanoforge serve`` reads it."""
    import torch

    from nanoforge.core_model.checkpoint import save_model
    from nanoforge.core_model.config import ModelConfig
    from nanoforge.core_model.model import build_model
    from nanoforge.tokenizer.chat import CHATML_SPECIALS, add_chat_template
    from nanoforge.tokenizer.io import save_tokenizer
    from nanoforge.tokenizer.train import train_bpe

    tok = train_bpe(texts=_MODEL_TEXTS, vocab_size=300, special_tokens=CHATML_SPECIALS, show_progress=False)
    tok = add_chat_template(tok, "chatml")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=32, max_seq_len=1024)
    save_model(build_model(config), path)
    save_tokenizer(tok, path / "tokenizer")
    return path


@pytest.fixture(scope="session")
def inference_target(tmp_path_factory: pytest.TempPathFactory):
    """``host:port`` of a ``nanoforge serve`` child process (gRPC on a free loopback port)."""
    import subprocess
    import sys
    import time

    base = tmp_path_factory.mktemp("rag-inference")
    model = _build_tiny_model(base / "model")
    log = base / "serve.log"
    cmd = [
        sys.executable,
        "-m",
        "nanoforge.cli",
        "serve",
        "--model",
        str(model),
        "--port",
        "0",
        "--http-port",
        "0",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh)
    port = None
    end = time.monotonic() + 120
    while port is None and time.monotonic() < end:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("grpc listening on "):
                port = int(line.rsplit(":", 1)[1])
        if proc.poll() is not None:
            raise RuntimeError(f"nanoforge serve exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    if port is None:
        proc.kill()
        raise RuntimeError("nanoforge serve did not print its port within 120 s")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


class RagServer:
    """The RetrieverService on its own event loop in a background thread."""

    def __init__(self, root: Path, inference: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        coro = start_server(Library(root), EmbedderSpec("hash", dim=64), port=0, inference=inference)
        self.running = asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)
        self.channel = make_sync_channel(f"127.0.0.1:{self.running.port}")
        self.stub = pb_grpc.RetrieverServiceStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.running.stop(grace=1.0), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def rag_server() -> type[RagServer]:
    """``rag_server(root, inference_target)``: a RetrieverService (hash embedder) with ``.stub`` and ``.stop()``."""
    return RagServer
