"""Our own minimal LoRA: a ``LoRALinear`` wrapping ``nn.Linear``, injected by swapping modules by name.

LoRA (Hu et al., 2021) freezes a pretrained weight ``W`` (out x in) and learns a low-rank update:

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r)

``A`` starts Kaiming-uniform and ``B`` at zero, so the wrapped layer starts out computing exactly what the
base layer did. ``merge`` folds ``(alpha / r) * B A`` into ``W`` (no extra cost at inference), ``unmerge``
takes it out again. ``inject_lora`` is the torchtune-style builder swap: every ``nn.Linear`` whose module
name matches one of ``target_modules`` (``q_proj`` matches ``blocks.0.attn.q_proj``, as in peft) is replaced
by a ``LoRALinear`` around it; nothing inside the attention code knows about LoRA.

Files are PEFT's format, so peft and this module read each other's adapters:
``adapter_config.json`` + ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` / ``...lora_B.weight`` (parameter names of peft's LoRA layer,
without the adapter name).

What it does not do: several adapters at once, DoRA / rsLoRA / bias training, quantized bases (use peft
for those; ``adapters.py`` offers both behind one interface).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nanoforge.core_model.checkpoint import atomic_write_bytes, atomic_write_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """``base(x) + scaling * lora_B(lora_A(dropout(x)))`` with the base layer frozen.

    Args:
        base: the pretrained linear layer (kept as ``self.base_layer``, frozen).
        r: rank of the update (> 0).
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the LoRA branch's input (0 = none).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r={r} must be a positive int")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout={dropout} must be in [0, 1)")
        self.base_layer = base
        self.base_layer.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        w = base.weight
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform (as nn.Linear's default init), B = 0: the update starts at exactly zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A`` with the base weight's shape (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, r) @ (r, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        update = self.lora_B(self.lora_A(self.lora_dropout(x)))  # (..., r) -> (..., out)
        return out + update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (idempotent)."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (idempotent)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def matches(name: str, targets: Sequence[str]) -> bool:
    """peft's rule for a list of target names: the module name equals a target or ends with ``.target``.

    Example: ``matches("blocks.0.attn.q_proj", ["q_proj"])`` -> True; ``["proj"]`` -> False.
    """
    return any(name == t or name.endswith(f".{t}") for t in targets)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def inject_lora(
    model: nn.Module, target_modules: Sequence[str], r: int, alpha: float, dropout: float = 0.0
) -> list[str]:
    """Freeze ``model`` and wrap every matching ``nn.Linear`` in a ``LoRALinear``; returns the wrapped names.

    Raises:
        ValueError: no linear layer matches (names the linear layers that exist).
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [n for n in linears if matches(n, target_modules)]
    if not chosen:
        leaves = sorted({n.rpartition(".")[2] for n in linears})
        raise ValueError(
            f"LoRA target_modules {list(target_modules)} match no nn.Linear in the model; accepted: {', '.join(leaves)}"
        )
    model.requires_grad_(False)
    for name in chosen:
        parent, child = _parent(model, name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Module name -> ``LoRALinear`` for every injected layer."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer into its base weight (outputs unchanged, the LoRA branch skipped)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo ``merge_lora``."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every ``LoRALinear`` by its base ``nn.Linear`` (merged first when ``merge``); returns ``model``."""
    for name, layer in lora_layers(model).items():
        if merge:
            layer.merge()
        parent, child = _parent(model, name)
        setattr(parent, child, layer.base_layer)
    model.requires_grad_(True)
    return model


# ------------------------------------------------------------------------------------ PEFT-format files
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA weights under peft's saved key names (``base_model.model.<module>.lora_A.weight``)."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach().cpu().contiguous()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach().cpu().contiguous()
    return out


def peft_config_dict(
    target_modules: Iterable[str], r: int, alpha: float, dropout: float, base_model: str | None = None
) -> dict[str, Any]:
    """The ``adapter_config.json`` fields peft needs for a plain LoRA adapter (its defaults for the rest)."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }


def save_adapter(
    model: nn.Module, directory: str | os.PathLike[str], target_modules: Sequence[str], base_model: str | None
) -> Path:
    """Write the injected adapter in PEFT's format (both files atomic). Returns the directory.

    Raises:
        ValueError: the model has no LoRA layers.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers to save; call inject_lora first")
    first = next(iter(layers.values()))
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / ADAPTER_WEIGHTS, st_save(adapter_state_dict(model)))
    atomic_write_json(
        out / ADAPTER_CONFIG, peft_config_dict(target_modules, first.r, first.alpha, dropout, base_model)
    )
    return out


def read_adapter_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``adapter_config.json`` of a PEFT LoRA adapter.

    Raises:
        ValueError: missing / corrupt file, not a LoRA adapter, or options this layer does not implement.
    """
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise ValueError(
            f"{path}: not found; an adapter directory holds {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}"
        )
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt adapter config ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ValueError(
            f"{path}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else None!r}; accepted: LORA"
        )
    unsupported = {k: cfg.get(k) for k in ("use_dora", "use_rslora", "fan_in_fan_out") if cfg.get(k)}
    if cfg.get("bias", "none") != "none":
        unsupported["bias"] = cfg["bias"]
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        unsupported["rank_pattern/alpha_pattern"] = "set"
    if unsupported:
        raise ValueError(
            f"{path}: options {unsupported} are not supported by nanoforge.trainer.lora; load it with peft"
        )
    targets = cfg.get("target_modules")
    if isinstance(targets, str) or not targets:
        raise ValueError(f"{path}: target_modules={targets!r}; accepted: a non-empty list of module names")
    return cfg


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> list[str]:
    """Inject LoRA layers as ``adapter_config.json`` says and load ``adapter_model.safetensors`` into them.

    Works for adapters written by ``save_adapter`` and by peft's ``save_pretrained``. Returns the wrapped names.

    Raises:
        ValueError: bad config (see ``read_adapter_config``), missing/corrupt weights, missing or
            mis-shaped tensors.
    """
    cfg = read_adapter_config(directory)
    path = Path(directory) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ValueError(f"{path}: adapter weights not found")
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupt safetensors file ({e})") from e
    names = inject_lora(
        model,
        cfg["target_modules"],
        int(cfg["r"]),
        float(cfg["lora_alpha"]),
        float(cfg.get("lora_dropout", 0.0)),
    )
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{path}: adapter lacks tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    layers = lora_layers(model)
    with torch.no_grad():
        for key, ref in expected.items():
            if tensors[key].shape != ref.shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(tensors[key].shape)}, the model needs {tuple(ref.shape)}"
                )
            module, _, param = key.removeprefix(PEFT_PREFIX).rpartition(".")
            name, _, which = module.rpartition(".")
            getattr(layers[name], which).weight.copy_(tensors[key])
            assert param == "weight"
    return names
