"""Versioned model directories: ``config.json`` + ``model.safetensors`` (+ ``generation_config.json``).

What it does: ``save_model`` writes each file atomically (temp file in the same directory, fsync,
``os.replace``), storing tied weights once; ``load_model`` checks the format name and version, rebuilds the
model from the config and loads the weights, turning every problem (missing or corrupt file, unknown
config key, missing / unexpected tensor, shape mismatch) into a ``ValueError`` naming the file.
What it does not do: pickle (never: safetensors and JSON only), tokenizers, or HF layouts (``hf/``).

Layout::

    model_dir/
      config.json              {"format": "nanoforge-model", "version": 1, "config": {...ModelConfig...}}
      model.safetensors        state_dict; lm_head.weight omitted when tied to tok_emb.weight
      generation_config.json   optional sampling defaults
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import GPT, build_model

FORMAT = "nanoforge-model"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GENERATION_FILE = "generation_config.json"
TIED_KEY = "lm_head.weight"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def model_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The tensors saved for ``model``: contiguous CPU copies, the tied LM head left out."""
    sd = model.state_dict()
    if model.config.tie_embeddings:
        sd.pop(TIED_KEY, None)
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_model(
    model: GPT, directory: str | os.PathLike[str], generation_config: dict[str, Any] | None = None
) -> Path:
    """Save ``model`` into ``directory`` (created if needed). Returns the directory path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_FILE, st_save(model_state_dict(model), metadata={"format": FORMAT}))
    if generation_config is not None:
        atomic_write_json(out / GENERATION_FILE, generation_config)
    # The config goes last: a directory with a config.json is a complete checkpoint.
    atomic_write_json(
        out / CONFIG_FILE, {"format": FORMAT, "version": VERSION, "config": model.config.to_dict()}
    )
    return out


def read_config(directory: str | os.PathLike[str]) -> ModelConfig:
    """Read and validate ``config.json`` of a model directory.

    Raises:
        ValueError: missing / unreadable file, wrong format or version, invalid or unknown config keys.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(
            f"{path}: not found; a nanoforge model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(
            f"{path}: format {got!r} is not {FORMAT!r} (HF directories load via nanoforge.core_model.hf)"
        )
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: version {meta.get('version')!r} is not supported; accepted: {VERSION}")
    try:
        return ModelConfig.from_dict(meta.get("config"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def read_generation_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``generation_config.json`` as a dict, or ``{}`` when absent."""
    path = Path(directory) / GENERATION_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


def load_weights(model: GPT, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``model`` after checking names and shapes (``source`` names the file in errors)."""
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop(TIED_KEY, None)
        tensors = {k: v for k, v in tensors.items() if k != TIED_KEY}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise ValueError(f"{source}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        raise ValueError(
            f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(t.shape)} but the config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)


def load_model(
    directory: str | os.PathLike[str], *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> GPT:
    """Load a model saved by ``save_model`` (in eval mode).

    Raises:
        ValueError: see ``read_config``; missing / corrupt ``model.safetensors``; missing, unexpected or
            mis-shaped tensors.
    """
    config = read_config(directory)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupt safetensors file ({e})") from e
    model = build_model(config)
    load_weights(model, tensors, str(path))
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device).eval()
