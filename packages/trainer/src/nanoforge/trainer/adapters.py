"""LoRA adapters behind one interface, two implementations: ``peft`` and our own ``nanoforge.trainer.lora``.

``LORA_IMPLS[impl]`` is a ``LoraImpl`` of four functions — attach adapters to a GPT, save them in PEFT's
format, load them, and merge them into a plain GPT — so the fine-tuning recipe never branches on the
implementation. Both write and read the same files (``adapter_config.json`` + ``adapter_model.safetensors``)
and a test checks that each reads the other's. ``LoraSettings.trainable_tokens`` also lets a few token rows
of the embedding (and the LM head: the same rows when tied) train, via peft's ``trainable_token_indices`` or
``lora.inject_token_rows``.

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
    trainable_tokens: tuple[int, ...] = ()  # token ids whose embedding / LM-head rows train too


def token_layers(model: GPT, ids: tuple[int, ...]) -> dict[str, list[int]]:
    """peft's ``trainable_token_indices`` for ``ids``: ``tok_emb`` only when the head is tied, else both.

    Raises:
        ValueError: an id outside the model's vocabulary, or repeated.
    """
    checked = lora.check_token_ids(ids, model.config.vocab_size)
    return {"tok_emb": checked} if lora.is_tied(model) else {"tok_emb": checked, "lm_head": checked}


@dataclass(frozen=True)
class LoraImpl:
    """The four operations a LoRA implementation provides."""

    attach: Callable[
        [GPT, LoraSettings], nn.Module
    ]  # freeze the base, add adapters; returns the module to train
    save: Callable[[nn.Module, Path, LoraSettings, str | None], None]  # PEFT-format files into a directory
    load: Callable[[GPT, Path], nn.Module]  # attach the adapter saved in a directory
    merged: Callable[[nn.Module], GPT]  # a plain GPT with the adapters folded in (consumes the module)


def _atomic_dir(directory: Path, fill: Callable[[Path], object]) -> None:
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
    tied = lora.is_tied(model)
    config = LoraConfig(
        r=s.r,
        lora_alpha=s.alpha,  # type: ignore[arg-type]  # annotated int in peft; a float works
        lora_dropout=s.dropout,
        target_modules=list(s.target_modules),
        bias="none",
        trainable_token_indices=token_layers(model, s.trainable_tokens) if s.trainable_tokens else None,
    )
    module = get_peft_model(model, config)
    if s.trainable_tokens and tied:
        _tie_peft_head(module)
    return module


def _tie_peft_head(module: nn.Module) -> None:
    """Make the tied ``lm_head`` read peft's token rows of ``tok_emb`` (input and output rows stay equal).

    peft ties them itself only for transformers models (``tie_word_embeddings`` + ``_tied_weights_keys``); our
    GPT has neither, so we wrap the head the way peft does, sharing the embedding's ``TrainableTokensLayer``.
    """
    from peft.utils.other import TrainableTokensWrapper

    gpt = base_gpt(module)
    emb = gpt.tok_emb
    if not isinstance(emb, TrainableTokensWrapper) or isinstance(gpt.lm_head, TrainableTokensWrapper):
        return
    adapter = emb.token_adapter
    name = adapter.active_adapters[0]
    head = TrainableTokensWrapper(
        gpt.lm_head, name, token_indices=adapter.token_indices[name], tied_adapter=adapter
    )
    head.set_adapter(name, inference_mode=module.peft_config[name].inference_mode)  # type: ignore[index,union-attr]
    gpt.lm_head = head  # type: ignore[assignment]


def _peft_save(module: nn.Module, directory: Path, s: LoraSettings, base: str | None) -> None:
    def fill(tmp: Path) -> None:
        module.peft_config["default"].base_model_name_or_path = base  # type: ignore[index,union-attr]
        # save_embedding_layers=False: peft would otherwise probe base_model_name_or_path (maybe the Hub)
        module.save_pretrained(str(tmp), save_embedding_layers=False)  # type: ignore[operator]

    _atomic_dir(directory, fill)


def _peft_load(model: GPT, directory: Path) -> nn.Module:
    from peft import PeftModel

    cfg = lora.read_adapter_config(directory)  # clear errors before peft's own
    layers, tied = lora.token_indices_of(cfg, str(directory)), lora.is_tied(model)
    if tied and "lm_head" in layers:
        raise ValueError(
            f"{directory}: trainable_token_indices lists lm_head, but this model ties it to tok_emb"
        )
    for ids in layers.values():
        lora.check_token_ids(ids, model.config.vocab_size, f"{directory}: trainable_token_indices")
    module = PeftModel.from_pretrained(model, str(directory))
    if layers and tied:
        _tie_peft_head(module)
    return module


def _peft_merged(module: nn.Module) -> GPT:
    return module.merge_and_unload()  # type: ignore[operator]


# ------------------------------------------------------------------------------------------- our own
def _own_attach(model: GPT, s: LoraSettings) -> nn.Module:
    layers = token_layers(model, s.trainable_tokens) if s.trainable_tokens else {}
    lora.inject_lora(model, s.target_modules, s.r, s.alpha, s.dropout)
    if layers:
        lora.inject_token_rows(model, layers)
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
