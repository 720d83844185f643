"""Reading and writing Hugging Face checkpoint directories: ``config.json`` plus safetensors weights.

What it does: reads ``config.json``; reads weights from ``model.safetensors`` or from shards listed in
``model.safetensors.index.json``; as a last resort reads ``pytorch_model.bin`` (or its shards) with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects; writes JSON and safetensors files
atomically (temp file in the same directory, fsync, ``os.replace``).
What it does not do: map names or shapes (that is the job of ``llama.py`` / ``gpt2.py``), download anything,
or ever unpickle a file with ``weights_only=False``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON object from ``path``; a missing or malformed file raises a one-line error.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid JSON or its top level is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_hf_weights(model_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load every tensor of a HF checkpoint directory into one CPU state dict (names as stored).

    Looks, in order, for ``model.safetensors.index.json`` (sharded), ``model.safetensors``, then the
    PyTorch ``.bin`` equivalents, which are read with ``torch.load(weights_only=True)`` (tensors only).

    Raises:
        FileNotFoundError: no weight file, or a shard named in the index is missing.
        ValueError: a weight file is corrupt or not a safetensors/tensor-only file.
    """
    root = Path(model_dir)
    if (root / SAFETENSORS_INDEX).is_file():
        return _read_sharded(root, root / SAFETENSORS_INDEX, _load_safetensors)
    if (root / SAFETENSORS_FILE).is_file():
        return _load_safetensors(root / SAFETENSORS_FILE)
    if (root / PYTORCH_INDEX).is_file():
        return _read_sharded(root, root / PYTORCH_INDEX, _load_torch_weights_only)
    if (root / PYTORCH_FILE).is_file():
        return _load_torch_weights_only(root / PYTORCH_FILE)
    raise FileNotFoundError(
        f"no weights in {root}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {PYTORCH_FILE} "
        f"or {PYTORCH_INDEX}"
    )


def _read_sharded(
    root: Path, index_path: Path, load_one: Callable[[Path], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path} has no 'weight_map' object (name -> shard file)")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = root / str(shard)
        if not shard_path.is_file():
            raise FileNotFoundError(f"shard {shard!r} listed in {index_path.name} is missing from {root}")
        tensors.update(load_one(shard_path))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ValueError(f"{index_path.name} lists tensors that no shard holds: {missing[:5]}")
    return tensors


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None


def _load_torch_weights_only(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad or unsafe files
        raise ValueError(
            f"{path} is not a tensor-only PyTorch file (weights_only=True refused it): {exc}"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} must hold a dict of tensors")
    return data


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via ``write(tmp)`` to a temp file next to ``path``, fsync it, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    _atomic_write(Path(path), write)


def write_safetensors_atomic(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save ``tensors`` (made contiguous, no shared storage) to a safetensors file atomically."""
    own = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    _atomic_write(Path(path), lambda tmp: save_file(own, str(tmp), metadata=metadata))
