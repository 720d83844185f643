"""Schedules and AdamW parameter groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import build_model
from nanoforge.trainer.optim import ScheduleArgs, build_adamw, cosine_lr, param_groups, wsd_lr

ARGS = ScheduleArgs(lr=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110, max_iters=200, decay_frac=0.25)


def test_cosine_warmup_midpoint_and_floor() -> None:
    assert cosine_lr(0, ARGS) == pytest.approx(1 / 11)
    assert cosine_lr(9, ARGS) == pytest.approx(10 / 11)
    assert cosine_lr(10, ARGS) == pytest.approx(1.0)
    assert cosine_lr(60, ARGS) == pytest.approx(0.55)  # halfway: min + (lr - min) / 2
    assert cosine_lr(110, ARGS) == pytest.approx(0.1)
    assert cosine_lr(500, ARGS) == pytest.approx(0.1)
    after = [cosine_lr(s, ARGS) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(after))


def test_wsd_is_flat_then_decays_to_min_at_the_end() -> None:
    decay_start = 10 + int(0.75 * 190)  # 152
    assert all(wsd_lr(s, ARGS) == 1.0 for s in range(10, decay_start))
    assert wsd_lr(decay_start, ARGS) < 1.0
    assert wsd_lr(199, ARGS) == pytest.approx(0.1)
    tail = [wsd_lr(s, ARGS) for s in range(decay_start, 200)]
    assert all(a > b for a, b in itertools.pairwise(tail))


def test_weight_decay_only_on_2d_weights() -> None:
    model = build_model(
        ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=16, max_seq_len=8, mlp_bias=True)
    )
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert no_decay["params"], "norm weights and biases must land in the no-decay group"
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == model.num_parameters()  # tied embedding counted once, nothing lost


@pytest.mark.parametrize("impl", ["auto", "foreach", "for-loop"])
def test_build_adamw_impls(impl: str) -> None:
    model = build_model(ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_seq_len=8))
    opt = build_adamw(
        model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, impl=impl, device=torch.device("cpu")
    )
    assert len(opt.param_groups) == 2 and opt.param_groups[0]["betas"] == (0.9, 0.95)
    with pytest.raises(ValueError, match=r"optim\.impl='adam' is not supported"):
        build_adamw(
            model,
            lr=1e-3,
            weight_decay=0.1,
            betas=(0.9, 0.95),
            eps=1e-8,
            impl="adam",
            device=torch.device("cpu"),
        )
    assert math.isfinite(opt.param_groups[0]["lr"])
