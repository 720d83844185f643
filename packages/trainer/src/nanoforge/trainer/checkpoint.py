"""Training checkpoints: everything needed to continue a run exactly, written atomically, last K kept.

What it does: ``save_checkpoint`` writes ``RUN/checkpoints/step-NNNNNNNN/`` by filling a hidden temp
directory (every file fsynced) and renaming it into place, so a killed process leaves either a complete
checkpoint or none; ``load_checkpoint`` reads one back, checking the format and that the model config
matches. Nothing is pickled: tensors go to safetensors, the rest to JSON.

    model.safetensors       model weights (tied LM head stored once, as in core-model)
    optimizer.safetensors   optimizer state tensors, keyed "state.<param index>.<name>"
    rng.safetensors         torch CPU (+ CUDA) generator states, data-sampler state, numpy MT19937 keys
    state.json              format, step, tokens seen, model config, optimizer param_groups, numpy/python
                            RNG scalars, grad-scaler state, metrics at save time

What it does not do: decide when to save (the recipe) or export the final model (core-model's save_model).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nanoforge.core_model.checkpoint import load_weights, model_state_dict
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import GPT

FORMAT = "nanoforge-train-checkpoint"
VERSION = 1
CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint on disk."""

    path: Path
    step: int
    meta: dict[str, Any]


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng(data_state: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All RNG states: tensors (torch, data sampler, numpy key array) and JSON scalars (numpy, python)."""
    # numpy's stub types the default (legacy=True) call as the dict form; it returns the legacy tuple
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "data": data_state,
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.uint32).astype(np.int64)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    scalars = {
        "numpy": {
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py[0], list(py[1]), py[2]],
    }
    return tensors, scalars


def restore_rng(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> torch.Tensor:
    """Restore the global RNGs; returns the data-sampler state for the loader."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    n = scalars["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = scalars["python"]
    random.setstate((version, tuple(internal), gauss))
    return tensors["data"]


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = t
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    data_state: torch.Tensor,
    extra: dict[str, Any],
    keep_last: int,
    weights: dict[str, torch.Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the ``keep_last`` newest. Returns its path.

    ``weights`` replaces the model's full state dict (LoRA runs save only the adapter tensors); ``scaler``'s
    state (fp16 loss scale and growth tracker; ``{}`` when disabled) goes into ``state.json`` as ``scaler``.
    """
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        if weights is None:
            weights = model_state_dict(model)
        _write(
            tmp / "model.safetensors", st_save({k: v.detach().cpu().contiguous() for k, v in weights.items()})
        )
        opt_tensors, opt_meta = _optimizer_split(optimizer)
        _write(tmp / "optimizer.safetensors", st_save(opt_tensors))
        rng_tensors, rng_scalars = capture_rng(data_state)
        _write(tmp / "rng.safetensors", st_save({k: v.contiguous() for k, v in rng_tensors.items()}))
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "model_config": model.config.to_dict(),
            "optimizer": opt_meta,
            "rng": rng_scalars,
            **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            **extra,
        }
        _write(tmp / "state.json", (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Complete checkpoints of a run, oldest first (hidden temp dirs of killed saves are ignored)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if not (m and (p / "state.json").is_file()):
            continue
        try:
            meta = json.loads((p / "state.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out.append(CheckpointInfo(p, int(m.group(1)), meta))
    return sorted(out, key=lambda c: c.step)


def remove_partial(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden temp directories a killed save left behind; returns what was removed."""
    root = Path(run_dir) / CKPT_DIR
    stale = sorted(root.glob(".tmp-step-*")) if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> CheckpointInfo | None:
    """The newest complete checkpoint, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"{path}: missing from the checkpoint")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupt safetensors file ({e})") from e


def load_checkpoint(
    ckpt: CheckpointInfo,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    load_tensors: Callable[[dict[str, torch.Tensor], str], None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Load weights, optimizer state and RNG states from ``ckpt``; returns the data-sampler state.

    ``load_tensors(tensors, source)`` replaces loading the full model (pairs with ``save_checkpoint(weights=)``).
    An enabled ``scaler`` gets its saved state back (none is saved by a run without fp16: it keeps its own).

    Raises:
        ValueError: wrong format/version, a checkpoint of a different model config, missing/corrupt files.
    """
    meta = ckpt.meta
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{ckpt.path}: not a {FORMAT!r} v{VERSION} checkpoint")
    saved = ModelConfig.from_dict(meta["model_config"])
    if saved != model.config:
        diff = {
            k: (v, getattr(model.config, k))
            for k, v in saved.to_dict().items()
            if model.config.to_dict()[k] != v
        }
        raise ValueError(
            f"{ckpt.path}: checkpoint of an incompatible model; (checkpoint, config) differ in {diff}. "
            "Resume with the run's own config or start a new run directory"
        )
    weights_path = ckpt.path / "model.safetensors"
    (load_tensors or partial(load_weights, model))(_read_tensors(weights_path), str(weights_path))
    opt_state = _optimizer_join(_read_tensors(ckpt.path / "optimizer.safetensors"), meta["optimizer"])
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"{ckpt.path}: optimizer state does not fit this model/optimizer ({e})") from e
    if scaler is not None and scaler.is_enabled() and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return restore_rng(_read_tensors(ckpt.path / "rng.safetensors"), meta["rng"])
