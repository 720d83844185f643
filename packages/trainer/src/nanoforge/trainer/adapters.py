"""LoRA adapters behind one interface, two implementations: ``peft`` and our own ``nanoforge.trainer.lora``.

``LORA_IMPLS[impl]`` is a ``LoraImpl`` of four functions — attach adapters to a GPT, save them in PEFT's
format, load them, and merge them into a plain GPT — so the fine-tuning recipe never branches on the
implementation. Both write and read the same files (``adapter_config.json`` + ``adapter_model.safetensors``)
and a test checks that each reads the other's.

What it does not do: choose hyper-parameters (the config's ``lora`` section) or train (``finetune``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from nanoforge.core_model.model import GPT
from nanoforge.trainer import lora


@dataclass(frozen=True)
class LoraSettings:
    """What ``lora.*`` in a fine-tuning config says."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class LoraImpl:
    """The four operations a LoRA implementation provides."""

    attach: Callable[
        [GPT, LoraSettings], nn.Module
    ]  # freeze the base, add adapters; returns the module to train
    save: Callable[[nn.Module, Path, LoraSettings, str | None], None]  # PEFT-format files into a directory
    load: Callable[[GPT, Path], nn.Module]  # attach the adapter saved in a directory
    merged: Callable[[nn.Module], GPT]  # a plain GPT with the adapters folded in (consumes the module)


def _atomic_dir(directory: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temp dir beside ``directory`` and rename it into place (replacing an old one)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
    try:
        fill(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------- peft
def _peft_attach(model: GPT, s: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    linears = {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = [t for t in s.target_modules if t not in linears]
    if unknown:
        raise ValueError(
            f"lora.target_modules {unknown} are not linear layers of this model; accepted: {', '.join(sorted(linears))}"
        )
    config = LoraConfig(
        r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules), bias="none"
    )
    return get_peft_model(model, config)


def _peft_save(module: nn.Module, directory: Path, s: LoraSettings, base: str | None) -> None:
    def fill(tmp: Path) -> None:
        module.peft_config["default"].base_model_name_or_path = base  # type: ignore[index,union-attr]
        # save_embedding_layers=False: peft would otherwise probe base_model_name_or_path (maybe the Hub)
        module.save_pretrained(str(tmp), save_embedding_layers=False)  # type: ignore[operator]

    _atomic_dir(directory, fill)


def _peft_load(model: GPT, directory: Path) -> nn.Module:
    from peft import PeftModel

    lora.read_adapter_config(directory)  # clear errors before peft's own
    return PeftModel.from_pretrained(model, str(directory))


def _peft_merged(module: nn.Module) -> GPT:
    return module.merge_and_unload()  # type: ignore[operator,no-any-return]


# ------------------------------------------------------------------------------------------- our own
def _own_attach(model: GPT, s: LoraSettings) -> nn.Module:
    lora.inject_lora(model, s.target_modules, s.r, s.alpha, s.dropout)
    return model


def _own_save(module: nn.Module, directory: Path, s: LoraSettings, base: str | None) -> None:
    _atomic_dir(directory, lambda tmp: lora.save_adapter(module, tmp, s.target_modules, base))


def _own_load(model: GPT, directory: Path) -> nn.Module:
    lora.load_adapter(model, directory)
    return model


def _own_merged(module: nn.Module) -> GPT:
    out = lora.unload_lora(module, merge=True)
    assert isinstance(out, GPT)
    return out


#: lora.impl -> implementation.
LORA_IMPLS: dict[str, LoraImpl] = {
    "peft": LoraImpl(_peft_attach, _peft_save, _peft_load, _peft_merged),
    "nanoforge": LoraImpl(_own_attach, _own_save, _own_load, _own_merged),
}


def base_gpt(module: nn.Module) -> GPT:
    """The GPT inside a module returned by ``attach`` (a PeftModel wraps it; ours is the GPT itself)."""
    if isinstance(module, GPT):
        return module
    inner = module.get_base_model()  # type: ignore[operator]
    assert isinstance(inner, GPT)
    return inner
