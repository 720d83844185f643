"""Fixtures of the server tests: a tiny random model dir and real servers on 127.0.0.1 with port 0.

The model (2 layers, d_model 32) and its byte-level BPE tokenizer (trained here on a few sentences, with
the ChatML specials) are built once per session into a temp dir, saved in the on-disk formats
``nanoforge serve`` reads. ``RunningServers`` runs ``cli.start_servers`` in a background thread with its
own event loop, so tests use the ordinary blocking clients (grpc, openai, urllib).
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from nanoforge.core_model.checkpoint import save_model
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import build_model
from nanoforge.inference_server.cli import ServeOptions, Servers, start_servers
from nanoforge.inference_server.text import ServingModel
from nanoforge.tokenizer.chat import CHATML_SPECIALS, add_chat_template
from nanoforge.tokenizer.io import save_tokenizer
from nanoforge.tokenizer.train import train_bpe

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "A tiny model serves tokens over gRPC and HTTP; streams are cancelled cleanly. " * 3,
    "def add(a, b):\n    return a + b\n" * 3,
    "Once upon a time there was a little server that answered every request. " * 3,
]


def build_tiny_model_dir(path: Path, *, n_layer: int = 2, d_model: int = 32, max_seq_len: int = 512) -> Path:
    """Train a tiny tokenizer and save a random GPT (2 layers, width 32 by default) with it under ``path``."""
    tok = train_bpe(texts=CORPUS, vocab_size=320, special_tokens=CHATML_SPECIALS, show_progress=False)
    tok = add_chat_template(tok, "chatml")
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tok.vocab_size, n_layer=n_layer, n_head=4, d_model=d_model, max_seq_len=max_seq_len
    )
    save_model(build_model(config), path)
    save_tokenizer(tok, path / "tokenizer")
    return path


class RunningServers:
    """``start_servers`` in a background event loop; ``run`` executes a coroutine on that loop."""

    def __init__(self, model_dir: Path, options: ServeOptions, **load: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="test-servers")
        self.thread.start()
        self.model: ServingModel = ServingModel.load(model_dir, name="tiny", **load)
        self.servers: Servers = self.run(start_servers(self.model, options), timeout=30)
        self.options = options

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.servers.grpc_port}"

    @property
    def http_base(self) -> str:
        scheme = "https" if self.options.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.servers.http_port}"

    def wait_idle(self, timeout: float = 10.0) -> dict[str, float]:
        """Poll the engine until nothing runs or waits; returns the last metrics."""
        end = time.monotonic() + timeout
        metrics = self.model.metrics()
        while time.monotonic() < end and (
            metrics["running"] or metrics["queue_depth"] or metrics["inflight"]
        ):
            time.sleep(0.02)
            metrics = self.model.metrics()
        return metrics

    def http_metrics(self) -> str:
        """The Prometheus text of ``/metrics`` (plain HTTP servers only)."""
        with urllib.request.urlopen(self.http_base + "/metrics", timeout=10) as response:
            return response.read().decode()

    @staticmethod
    def counter(text: str, series: str) -> float:
        """The value of one exact series line in a Prometheus text (0 when absent)."""
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def close(self) -> None:
        try:
            self.run(self.servers.stop(grace=2.0), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def slow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider model (4 layers, width 256, 2048 positions: ~2 ms a token alone on a laptop core).

    Cancellation and drain tests need a generation that is surely still running when the client hangs
    up or the server is told to stop; the tiny model can finish 500 tokens in 0.2 s.
    """
    return build_tiny_model_dir(
        tmp_path_factory.mktemp("slow-model"), n_layer=4, d_model=256, max_seq_len=2048
    )


@pytest.fixture(scope="module")
def slow_servers(slow_model_dir: Path) -> Iterator[RunningServers]:
    """gRPC + HTTP over the slow model, no auth."""
    running = RunningServers(slow_model_dir, ServeOptions(port=0, http_port=0), max_batch_size=2)
    yield running
    running.close()


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with 2048 positions: room for tool definitions (hundreds of tokens with the tiny
    tokenizer) plus a generated call."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("long-model"), max_seq_len=2048)


@pytest.fixture(scope="module")
def long_servers(long_model_dir: Path) -> Iterator[RunningServers]:
    """gRPC only, no auth, batch of 4, over the long-context tiny model."""
    running = RunningServers(long_model_dir, ServeOptions(port=0, http_port=None), max_batch_size=4)
    yield running
    running.close()


@pytest.fixture(scope="module")
def plain_servers(tiny_model_dir: Path) -> Iterator[RunningServers]:
    """gRPC + HTTP, no auth, no TLS, batch of 4."""
    running = RunningServers(tiny_model_dir, ServeOptions(port=0, http_port=0), max_batch_size=4)
    yield running
    running.close()


@pytest.fixture(scope="session")
def start_servers_fn() -> type[RunningServers]:
    """The ``RunningServers`` class, for tests that need their own options (auth, TLS)."""
    return RunningServers


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed EC certificate for ``localhost`` / 127.0.0.1 and its key, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="session")
def self_signed_fn() -> Any:
    """``write_self_signed(directory) -> (cert_file, key_file)``."""
    return write_self_signed
