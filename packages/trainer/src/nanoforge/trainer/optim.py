"""Optimizer hygiene in one place: AdamW with decay on 2-D weights only, and the learning-rate schedules.

What it does: ``build_adamw`` splits parameters into a decayed group (matrices and embeddings, ``dim >= 2``)
and a non-decayed group (norm weights, biases) and picks the fastest AdamW implementation torch offers
for the device (fused, else foreach); ``SCHEDULES`` maps a name to ``lr(step, ...)``:

    cosine    linear warmup, then cosine from lr down to min_lr at decay_iters, then flat min_lr
    wsd       linear warmup, stable at lr, then linear decay to min_lr over the last decay_frac of the run
    constant  linear warmup, then lr

What it does not do: clip gradients or step anything (the recipe does, in plain sight).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ScheduleArgs:
    """What a schedule needs: peak/floor lr, warmup, the step the decay ends and the run length."""

    lr: float
    min_lr: float
    warmup_iters: int
    decay_iters: int
    max_iters: int
    decay_frac: float


def _warmup(step: int, a: ScheduleArgs) -> float | None:
    """Linear warmup ``lr * (step + 1) / (warmup + 1)`` (nanoGPT's), or None after the warmup."""
    if step < a.warmup_iters:
        return a.lr * (step + 1) / (a.warmup_iters + 1)
    return None


def cosine_lr(step: int, a: ScheduleArgs) -> float:
    """Warmup, cosine to ``min_lr`` at ``decay_iters``, then ``min_lr``. E.g. lr=1, min=0.1, halfway -> 0.55."""
    warm = _warmup(step, a)
    if warm is not None:
        return warm
    if step >= a.decay_iters:
        return a.min_lr
    ratio = (step - a.warmup_iters) / (a.decay_iters - a.warmup_iters)
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.lr - a.min_lr)


def wsd_lr(step: int, a: ScheduleArgs) -> float:
    """Warmup, stable at ``lr``, then linear to ``min_lr`` over the last ``decay_frac`` of ``max_iters``."""
    warm = _warmup(step, a)
    if warm is not None:
        return warm
    decay_start = a.warmup_iters + int((1.0 - a.decay_frac) * (a.max_iters - a.warmup_iters))
    if step < decay_start:
        return a.lr
    span = max(1, a.max_iters - decay_start)
    return a.lr + min(1.0, (step - decay_start + 1) / span) * (a.min_lr - a.lr)


def constant_lr(step: int, a: ScheduleArgs) -> float:
    """Warmup, then ``lr``."""
    warm = _warmup(step, a)
    return a.lr if warm is None else warm


SCHEDULES: dict[str, Callable[[int, ScheduleArgs], float]] = {
    "cosine": cosine_lr,
    "wsd": wsd_lr,
    "constant": constant_lr,
}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: ``dim >= 2`` tensors decayed, the rest (norms, biases) not. Tied weights appear once."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _has_fused(device: torch.device) -> bool:
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    return device.type in ("cuda", "cpu") and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (
        2,
        4,
    )


def build_adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    impl: str,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; ``impl`` is auto | fused | foreach | for-loop.

    Raises:
        ValueError: ``impl="fused"`` where torch has no fused AdamW for ``device``; an unknown ``impl``.
    """
    kinds = {"auto", "fused", "foreach", "for-loop"}
    if impl not in kinds:
        raise ValueError(f"optim.impl={impl!r} is not supported; accepted: {', '.join(sorted(kinds))}")
    if impl == "auto":
        impl = "fused" if _has_fused(device) else "foreach"
    if impl == "fused" and not _has_fused(device):
        raise ValueError(
            f"optim.impl='fused' is not available for device {device.type!r} in torch {torch.__version__}"
        )
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[impl]
    groups = param_groups(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **flags)
