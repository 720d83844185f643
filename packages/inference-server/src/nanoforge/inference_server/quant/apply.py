"""Quantize a loaded model in place by swapping its ``nn.Linear`` modules for quantized ones.

What it does: ``QUANTIZERS`` maps a mode name (``int8``, ``int4``, ``int4-g32`` / ``-g64`` / ``-g128``) to
a builder ``nn.Linear -> module``; ``quantize_model`` walks the module names, builds a replacement for every
``nn.Linear`` that is not skipped and sets it on its parent (composition: the core-model code is untouched).
``lm_head`` is skipped by default (the output layer is the most sensitive one, and when it is tied to the
embedding quantizing it would save nothing). ``model_bytes`` counts the bytes of parameters + buffers.
What it does not do: quantize embeddings or norms, calibrate on data (GPTQ/AWQ), or save quantized files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import nn

from nanoforge.inference_server.quant.linear import Int4Linear, Int8Linear

#: mode -> builder of the replacement for one ``nn.Linear``. ``int4`` means group size 64.
QUANTIZERS: dict[str, Callable[[nn.Linear], nn.Module]] = {
    "int8": Int8Linear.from_linear,
    "int4": partial(Int4Linear.from_linear, group_size=64),
    "int4-g32": partial(Int4Linear.from_linear, group_size=32),
    "int4-g64": partial(Int4Linear.from_linear, group_size=64),
    "int4-g128": partial(Int4Linear.from_linear, group_size=128),
}


def quantize_model(model: nn.Module, mode: str, skip: Iterable[str] = ("lm_head",)) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` (except names ending in ``skip``) by its quantized form.

    Returns:
        The names of the replaced modules.

    Raises:
        ValueError: unknown ``mode`` (the message lists the accepted ones).
    """
    builder = QUANTIZERS.get(mode)
    if builder is None:
        raise ValueError(f"unknown quantize mode {mode!r}; accepted: {', '.join(QUANTIZERS)}")
    skip = tuple(skip)
    targets = [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and not (name.endswith(skip) if skip else False)
    ]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        with torch.no_grad():
            setattr(parent, child, builder(getattr(parent, child)))
    return targets


def model_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


__all__ = ["QUANTIZERS", "model_bytes", "quantize_model"]
