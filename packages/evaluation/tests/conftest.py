"""Fixtures of the evaluation tests: a tiny random model, a REAL ``nanoforge serve`` child process on
loopback (gRPC + OpenAI HTTP, ports chosen by the OS), and a stub of Anthropic's ``/v1/messages`` API.

The model (2 layers, width 32) and its byte-level BPE tokenizer are built here from a few sentences, so
quality numbers are meaningless; the tests check the machinery. The server runs as a subprocess of
``python -m nanoforge.cli serve`` so this package never imports the inference server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CORPUS = [
    "Question: what is two plus two? Answer: four. " * 3,
    "The quick brown fox jumps over the lazy dog. " * 3,
    '{"name": "fox", "legs": 4} {"name": "bird", "legs": 2} ' * 3,
    "Is the sky blue? yes. Is fire cold? no. " * 3,
]


def build_tiny_model(path: Path) -> Path:
    """A random 2-layer GPT with a 300-token BPE tokenizer (ChatML specials), saved as ``nanoforge serve`` reads it.

    The context is 2048 tokens because judge prompts (rubric + task + response) plus a verdict need ~700."""
    import torch

    from nanoforge.core_model.checkpoint import save_model
    from nanoforge.core_model.config import ModelConfig
    from nanoforge.core_model.model import build_model
    from nanoforge.tokenizer.chat import CHATML_SPECIALS, add_chat_template
    from nanoforge.tokenizer.io import save_tokenizer
    from nanoforge.tokenizer.train import train_bpe

    tok = train_bpe(texts=CORPUS, vocab_size=300, special_tokens=CHATML_SPECIALS, show_progress=False)
    tok = add_chat_template(tok, "chatml")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=32, max_seq_len=2048)
    save_model(build_model(config), path)
    save_tokenizer(tok, path / "tokenizer")
    return path


@dataclass
class Server:
    """A running ``nanoforge serve`` child and its bound addresses."""

    proc: subprocess.Popen[bytes]
    grpc_target: str
    http_base: str


def start_server(model_dir: Path, log: Path) -> Server:
    """Start ``nanoforge serve`` on free loopback ports and wait for it to print them."""
    cmd = [
        sys.executable,
        "-m",
        "nanoforge.cli",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        "0",
        "--http-port",
        "0",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh)
    grpc_port = http_port = None
    end = time.monotonic() + 120
    while time.monotonic() < end and (grpc_port is None or http_port is None):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("grpc listening on "):
                grpc_port = int(line.rsplit(":", 1)[1])
            if line.startswith("http listening on "):
                http_port = int(line.rsplit(":", 1)[1])
        if proc.poll() is not None:
            raise RuntimeError(f"nanoforge serve exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    if grpc_port is None or http_port is None:
        proc.kill()
        raise RuntimeError("nanoforge serve did not print its ports within 120 s")
    return Server(proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("eval-model"))


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tiny_model_dir, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield running
    running.proc.terminate()
    try:
        running.proc.wait(30)
    except subprocess.TimeoutExpired:
        running.proc.kill()


class AnthropicStub:
    """A loopback stand-in for Anthropic's Messages API (third-party API stub, no network).

    ``POST /v1/messages`` answers a fixed-shape message whose text is ``"stub: " + last word of the prompt``.
    A prompt containing ``FLAKY`` gets HTTP 529 (overloaded) on its first call, then succeeds; a prompt
    containing ``BROKEN`` always gets HTTP 400. ``calls`` counts requests per prompt.
    """

    def __init__(self) -> None:
        stub = self
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path != "/v1/messages":
                    self._send(
                        404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}
                    )
                    return
                prompt = body["messages"][-1]["content"]
                with stub.lock:
                    stub.calls[prompt] = n = stub.calls.get(prompt, 0) + 1
                if "BROKEN" in prompt:
                    self._send(
                        400,
                        {"type": "error", "error": {"type": "invalid_request_error", "message": "broken"}},
                    )
                    return
                if "FLAKY" in prompt and n == 1:
                    self._send(
                        529, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
                    )
                    return
                words = prompt.split()
                self._send(
                    200,
                    {
                        "id": "msg_stub",
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [{"type": "text", "text": "stub: " + (words[-1] if words else "")}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": len(words), "output_tokens": 2},
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def anthropic_stub() -> Iterator[AnthropicStub]:
    stub = AnthropicStub()
    yield stub
    stub.close()


@pytest.fixture
def write_task(tmp_path: Path) -> Any:
    """``write_task(records, **yaml_keys) -> Path`` writes data.jsonl + task.yaml into tmp_path."""
    import yaml

    def write(records: list[dict[str, Any]], **keys: Any) -> Path:
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        task = {"name": "t", "data": "data.jsonl", **keys}
        path = tmp_path / "task.yaml"
        path.write_text(yaml.safe_dump(task))
        return path

    return write
