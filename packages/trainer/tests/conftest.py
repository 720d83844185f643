"""Fixtures for the trainer tests: a small generated corpus, a tiny BPE tokenizer, prepared data, tiny configs.

Everything is built here (no downloads, nothing from ../shared): a few dozen synthetic documents, a
300-id tokenizer with <|endoftext|>, and a 2-layer width-32 model that trains in a second on one thread.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nanoforge.tokenizer import train_bpe
from nanoforge.trainer.config import PretrainConfig, load_config
from nanoforge.trainer.prepare import prepare

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hum",
    "jazz",
    "tunes",
]


def _doc(rng: random.Random) -> str:
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(rng.randint(2, 5))]
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # small models run fastest, and repeatably, on one thread


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six files of blank-line separated documents (about 40 KB in all)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(6):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.txt").write_text("\n\n".join(_doc(rng) for _ in range(30)) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    tok = train_bpe(
        corpus_dir, vocab_size=300, special_tokens=("<|endoftext|>",), num_workers=1, show_progress=False
    )
    out = tmp_path_factory.mktemp("tok")
    tok.save(out)
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare([corpus_dir], tokenizer_dir, out, val_fraction=0.2, doc_split="paragraph")
    return out


TINY = [
    "model.vocab_size=null",
    "model.n_layer=2",
    "model.n_head=2",
    "model.d_model=32",
    "model.max_seq_len=16",
    "train.batch_size=4",
    "train.block_size=16",
    "train.max_iters=30",
    "train.eval_interval=10",
    "train.eval_iters=2",
    "train.log_interval=5",
    "train.threads=1",
    "train.device=cpu",
    "schedule.warmup_iters=5",
    "schedule.decay_iters=null",
    "checkpoint.interval=10",
    "checkpoint.keep_last=2",
    "log.progress=false",
    "optim.lr=3e-3",
]


@pytest.fixture
def tiny_overrides(data_dir: Path) -> list[str]:
    """Overrides that turn the shakespeare-char config into a tiny run on the test data."""
    return [*TINY, f"data.dir={data_dir}"]


@pytest.fixture
def tiny_cfg(tiny_overrides: list[str]) -> Callable[..., PretrainConfig]:
    """``tiny_cfg("train.max_iters=50", ...)``: the tiny config with extra overrides."""

    def make(*extra: str) -> PretrainConfig:
        return load_config("shakespeare-char", [*tiny_overrides, *extra])

    return make


# ------------------------------------------------------------------------------------ fine-tuning
TOPICS = ["fox", "dog", "jazz", "wizards", "tunes", "seven"]


def _chat(rng: random.Random, i: int) -> dict:
    topic = rng.choice(TOPICS)
    if i % 3 == 0:  # instruction/input/output records are mixed with chat records
        return {"instruction": f"say {topic} twice", "input": "", "output": f"{topic} {topic}"}
    return {
        "messages": [
            {"role": "system", "content": "you are a quick brown fox"},
            {"role": "user", "content": f"which word: {topic}?"},
            {"role": "assistant", "content": f"the {topic} jumps over the lazy dog"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": f"{topic} {topic}"},
        ]
    }


@pytest.fixture(scope="session")
def sft_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 small conversations in JSONL, chat and instruction records mixed."""
    import json

    rng = random.Random(1)
    path = tmp_path_factory.mktemp("sft") / "chats.jsonl"
    path.write_text("".join(json.dumps(_chat(rng, i)) + "\n" for i in range(60)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def chat_tokenizer(tokenizer_dir: Path):
    """The test BPE tokenizer with the ChatML template (and its special tokens) attached."""
    from nanoforge.tokenizer import load_tokenizer
    from nanoforge.tokenizer.chat import add_chat_template

    return add_chat_template(load_tokenizer(tokenizer_dir), "chatml")


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory, chat_tokenizer) -> Path:
    """A tiny random GPT (vocab 320 >= tokenizer + chat specials) saved with its chat tokenizer."""
    from nanoforge.core_model.checkpoint import save_model
    from nanoforge.core_model.config import ModelConfig
    from nanoforge.core_model.model import build_model

    torch.manual_seed(0)
    config = ModelConfig.from_dict(
        {"vocab_size": 320, "n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 32}
    )
    out = tmp_path_factory.mktemp("base")
    save_model(build_model(config), out)
    chat_tokenizer.save(out / "tokenizer")
    return out


FT_TINY = [
    "train.batch_size=4",
    "train.block_size=32",
    "train.max_iters=20",
    "train.eval_interval=10",
    "train.eval_iters=2",
    "train.log_interval=5",
    "train.threads=1",
    "train.device=cpu",
    "schedule.warmup_iters=2",
    "checkpoint.interval=10",
    "checkpoint.keep_last=2",
    "log.progress=false",
    "log.tensorboard=false",
    "optim.lr=3e-3",
    "lora.r=4",
    "lora.alpha=8",
]


@pytest.fixture
def ft_overrides(base_model_dir: Path, sft_jsonl: Path) -> list[str]:
    """Overrides for a tiny fine-tuning run on the test conversations."""
    return [*FT_TINY, f"base.model={base_model_dir}", f"data.train={sft_jsonl}"]
