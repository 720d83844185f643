"""Shared test setup: one torch thread, a small trained recommender, and (on demand) a REAL InferenceService.

The recommender is trained here on the simulator (about 10 s). The InferenceService is ``nanoforge serve``
run as a child process on loopback (port 0, printed) over a random 2-layer GPT with a byte-level BPE
tokenizer built from a few sentences: its text is gibberish, which is what the tests need to check the
machinery (JSON shape, ranking, explanations) without any download.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

TOY_TEXT = [
    "Fresh running shoes for your next trip. Shop now and save on every pair. " * 3,
    '{"headline": "Smart app", "body": "Fast and simple.", "call_to_action": "Try it"} ' * 3,
    "The quick brown fox jumps over the lazy dog. Cozy kitchen decor for home. " * 3,
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def rec_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir of a small model trained on the simulator (conversion horizon 2)."""
    from nanoforge.recommender.config import load_rec_config
    from nanoforge.recommender.train import train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("rec-serve") / "simrec"
    overrides = ["train.eval_interval=100000", "checkpoint.interval=100000", "model.max_len=32",
                 "train.max_iters=300", "data.sim_users=200", "optim.lr=0.005", "data.horizon=2"]  # fmt: skip
    train(load_rec_config("sim-tiny", overrides), run)
    return run


def _tiny_lm(path: Path) -> Path:
    from nanoforge.core_model.checkpoint import save_model
    from nanoforge.core_model.config import ModelConfig
    from nanoforge.core_model.model import build_model
    from nanoforge.tokenizer.chat import CHATML_SPECIALS, add_chat_template
    from nanoforge.tokenizer.io import save_tokenizer
    from nanoforge.tokenizer.train import train_bpe

    tok = add_chat_template(
        train_bpe(texts=TOY_TEXT, vocab_size=300, special_tokens=CHATML_SPECIALS, show_progress=False),
        "chatml",
    )
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=1024)
    save_model(build_model(cfg), path)
    save_tokenizer(tok, path / "tokenizer")
    return path


@pytest.fixture(scope="session")
def inference_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a running ``nanoforge serve`` (gRPC only) over a tiny random model."""
    model = _tiny_lm(tmp_path_factory.mktemp("tiny-lm"))
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    cmd = [sys.executable, "-m", "nanoforge.cli", "serve", "--model", str(model), "--port", "0", "--no-http"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("grpc listening on "):
                    port = int(line.rsplit(":", 1)[1])
            if proc.poll() is not None:
                raise RuntimeError(f"nanoforge serve exited: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        if port is None:
            raise RuntimeError("nanoforge serve printed no port within 120 s")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
