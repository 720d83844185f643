"""Reading prepared token data: checked manifest, memmapped splits, nanoGPT-style random windows.

What it does: ``open_data`` reads ``manifest.json`` (format/version), checks that both ``.bin`` files exist
with exactly the sizes the manifest promises, and that the tokenizer offered for training hashes to the
manifest's ``tokenizer_sha256``; ``Batches`` draws ``(x, y)`` windows at random offsets from a split with
its own seeded ``torch.Generator`` whose state is saved in checkpoints, so a resumed run sees exactly the
batches the uninterrupted run would have seen.
What it does not do: write data (``prepare``), epochs or document-aware packing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanoforge.tokenizer import Tokenizer
from nanoforge.trainer.prepare import FORMAT, MANIFEST, SPLITS, VERSION, resolve_tokenizer, tokenizer_hash


@dataclass
class TokenData:
    """A prepared data directory: its manifest, tokenizer and one memmap per split."""

    directory: Path
    manifest: dict[str, Any]
    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]  # a read-only np.memmap per split (a plain empty array for 0 tokens)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def bytes_per_token(self, split: str) -> float:
        """Average UTF-8 bytes per token of a split (for bits per byte)."""
        return float(self.manifest["splits"][split]["bytes_per_token"])


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked manifest of a prepared data directory.

    Raises:
        ValueError: missing / corrupt manifest, wrong format or version.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path}: not found; prepare the data with `nanoforge train prepare` first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT!r} manifest")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path}: version {manifest.get('version')!r} is not supported; accepted: {VERSION}")
    return manifest


def open_data(
    directory: str | os.PathLike[str], tokenizer: str | os.PathLike[str] | None = None
) -> TokenData:
    """Open a prepared directory, checking shards and tokenizer.

    Args:
        directory: output of ``prepare``.
        tokenizer: the tokenizer to train with (a dir or ``"byte"``); default the copy in ``directory``.

    Raises:
        ValueError: missing or truncated shard, a tokenizer whose hash differs from the manifest's.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    tok_spec = tokenizer if tokenizer is not None else root / "tokenizer"
    try:
        tok = resolve_tokenizer(tok_spec)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer for {root}: {e}") from e
    got = tokenizer_hash(tok)
    if got != manifest["tokenizer_sha256"]:
        raise ValueError(
            f"tokenizer {tok_spec} (sha256 {got[:12]}) does not match the data in {root} "
            f"(prepared with sha256 {manifest['tokenizer_sha256'][:12]}); re-run `nanoforge train prepare` or pass its tokenizer"
        )
    dtype = np.dtype(manifest["dtype"])
    splits = {}
    for split in SPLITS:
        path = root / f"{split}.bin"
        expected = int(manifest["splits"][split]["tokens"]) * dtype.itemsize
        if not path.is_file():
            raise ValueError(f"{path}: data shard missing; re-run `nanoforge train prepare`")
        if path.stat().st_size != expected:
            raise ValueError(
                f"{path}: {path.stat().st_size} bytes but the manifest promises {expected}; the shard is corrupt or truncated"
            )
        splits[split] = np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype=dtype)
    return TokenData(root, manifest, tok, splits)


class Batches:
    """Random ``(x, y)`` windows of ``block_size`` tokens from one split (y is x shifted by one).

    Example: data ``[5, 6, 7, 8]``, block 2, offset 1 -> x ``[6, 7]``, y ``[7, 8]``.
    """

    def __init__(
        self, data: np.ndarray, batch_size: int, block_size: int, seed: int, name: str = "train"
    ) -> None:
        if len(data) <= block_size:
            raise ValueError(
                f"the {name} split has {len(data)} tokens; it needs more than block_size={block_size} "
                "(add text, lower train.block_size or change the val fraction)"
            )
        self.data = data
        self.batch_size = batch_size
        self.block_size = block_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: x, y of shape (B, T), int64, on ``device``."""
        T = self.block_size
        offsets = torch.randint(len(self.data) - T, (self.batch_size,), generator=self.generator).numpy()
        # one fancy-indexed gather from the memmap (3x faster than stacking B slices: ~9 vs ~27 us at 12 x 64)
        window = self.data[offsets[:, None] + np.arange(T + 1)].astype(np.int64)  # (B, T+1)
        xy = torch.from_numpy(window)
        x, y = xy[:, :-1], xy[:, 1:]  # (B, T) each
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.contiguous(), y.contiguous()

    def get_state(self) -> torch.Tensor:
        """The generator state (a uint8 tensor) for checkpoints."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
