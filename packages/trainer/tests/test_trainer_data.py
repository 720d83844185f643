"""Opening prepared data (hash and shard checks) and the random-window sampler."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoforge.tokenizer import Tokenizer
from nanoforge.trainer.data import Batches, open_data


def test_open_checks_tokenizer_hash(data_dir: Path, tmp_path: Path) -> None:
    data = open_data(data_dir)
    assert data.vocab_size == 300 and data.splits["train"].dtype == np.uint16
    other = tmp_path / "other"
    Tokenizer([(101, 32)], special_tokens=["<|endoftext|>"]).save(other)
    with pytest.raises(ValueError, match=r"does not match the data in .*re-run `nanoforge train prepare`"):
        open_data(data_dir, other)
    with pytest.raises(ValueError, match="does not match"):
        open_data(data_dir, "byte")


@pytest.fixture
def data_copy(data_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(data_dir, out)
    return out


def test_truncated_missing_and_corrupt(data_copy: Path) -> None:
    train = data_copy / "train.bin"
    train.write_bytes(train.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"train\.bin: \d+ bytes but the manifest promises \d+"):
        open_data(data_copy)
    train.unlink()
    with pytest.raises(ValueError, match=r"train\.bin: data shard missing"):
        open_data(data_copy)
    (data_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt manifest"):
        open_data(data_copy)
    (data_copy / "manifest.json").unlink()
    with pytest.raises(ValueError, match="prepare the data with `nanoforge train prepare` first"):
        open_data(data_copy)


def test_batches_shift_seed_and_state() -> None:
    data = np.arange(1000, dtype=np.uint16)
    b = Batches(data, batch_size=3, block_size=8, seed=7)
    x, y = b.next(torch.device("cpu"))
    assert x.shape == y.shape == (3, 8) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)  # data is 0..999, so the target is the input plus one
    state = b.get_state()
    after = [b.next(torch.device("cpu"))[0] for _ in range(3)]
    b.set_state(state)
    assert all(torch.equal(a, b.next(torch.device("cpu"))[0]) for a in after)
    again = Batches(data, batch_size=3, block_size=8, seed=7).next(torch.device("cpu"))[0]
    assert torch.equal(again, x)
    with pytest.raises(ValueError, match="the val split has 8 tokens; it needs more than block_size=8"):
        Batches(np.arange(8), 1, 8, 0, "val")
