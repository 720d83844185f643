"""Attention variants behind one interface, looked up by name in ``ATTENTION`` (a registry of builders).

What it does: maps each name accepted by ``ModelConfig.attention`` to a builder ``(config, layer) -> mixer``.
What it does not do: projections / RoPE (``base.Attention``) or decode bookkeeping (``state``).
"""

from collections.abc import Callable

from torch import nn

from nanoforge.core_model.attention.linear import build_linear
from nanoforge.core_model.attention.linformer import build_linformer
from nanoforge.core_model.attention.performer import build_performer
from nanoforge.core_model.attention.retnet import build_retnet
from nanoforge.core_model.attention.softmax import build_sliding, build_softmax
from nanoforge.core_model.config import ModelConfig

ATTENTION: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "softmax": build_softmax,
    "sliding": build_sliding,
    "linear": build_linear,
    "performer": build_performer,
    "linformer": build_linformer,
    "retnet": build_retnet,
}

__all__ = ["ATTENTION"]
