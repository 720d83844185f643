"""Batched multi-LoRA linear layer: ``base(x)`` plus a per-row low-rank delta from that row's adapter.

What it does: ``LoRARouting`` is shared by every wrapper of one model; before a forward the engine tells it
which adapter each batch row uses (``set_rows``) and it groups the rows by adapter once. Each
``MultiLoRALinear`` holds the (A, B, scale) of every adapter that targets its module and computes
``y = base(x)``, then for each adapter group ``y[rows] += (x[rows] @ A^T) @ B^T * scale``. Rows without an
adapter, or whose adapter does not target this module, get no delta, so requests with different adapters
(or none) share one batch. ``base`` may be any linear-like module (``nn.Linear``, ``Int8Linear``,
``Int4Linear``), so LoRA composes with quantization.
What it does not do: read files (``peft_format``), decide which modules to wrap (``adapters``), train, or
merge weights into the base.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
from torch import nn

W = TypeVar("W")  # an adapter's per-layer weights (LoRAWeights, TokenRowWeights)


@dataclass
class LoRAWeights:
    """One adapter's factors for one module: ``A`` (r, in), ``B`` (out, r), ``scale`` = alpha / r."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def num_parameters(self) -> int:
        """Number of values in A and B."""
        return self.A.numel() + self.B.numel()


class LoRARouting:
    """Which rows of the current batch use which adapter (set before, cleared after each forward)."""

    def __init__(self) -> None:
        self.groups: list[tuple[str, torch.Tensor]] = []  # (adapter, row indices), adapters only
        self.rows = 0

    def set_rows(self, adapters: Sequence[str | None] | None, device: torch.device | str = "cpu") -> None:
        """Route row i to ``adapters[i]`` (None / "" = base model); ``None`` clears the routing."""
        self.groups = []
        self.rows = 0 if adapters is None else len(adapters)
        by_name: dict[str, list[int]] = {}
        for i, name in enumerate(adapters or ()):
            if name:
                by_name.setdefault(name, []).append(i)
        self.groups = [(n, torch.tensor(r, dtype=torch.long, device=device)) for n, r in by_name.items()]

    def active(self, adapters: Mapping[str, W], batch_rows: int) -> Iterator[tuple[str, torch.Tensor, W]]:
        """(adapter, row indices, that adapter's weights here) for each routed adapter this layer holds.

        Raises:
            RuntimeError: the routing was set for a batch of another size (an engine bug, never user input).
        """
        if not self.groups or not adapters:
            return
        if self.rows != batch_rows:
            raise RuntimeError(f"LoRA routing is set for {self.rows} rows but the batch has {batch_rows}")
        for name, rows in self.groups:
            w = adapters.get(name)
            if w is not None:
                yield name, rows, w


class MultiLoRALinear(nn.Module):
    """``base`` plus per-row LoRA deltas routed by a shared ``LoRARouting``."""

    def __init__(self, base: nn.Module, routing: LoRARouting) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        self.in_features = int(cast(Any, base).in_features)
        self.out_features = int(cast(Any, base).out_features)
        self.adapters: dict[str, LoRAWeights] = {}  # plain dict: not part of the model's state_dict

    def add(self, name: str, weights: LoRAWeights) -> None:
        """Attach adapter ``name``. Raises ValueError when the factor shapes do not fit this layer."""
        r = weights.A.shape[0]
        if weights.A.shape != (r, self.in_features) or weights.B.shape != (self.out_features, r):
            raise ValueError(
                f"adapter {name!r}: lora_A {tuple(weights.A.shape)} / lora_B {tuple(weights.B.shape)} do not fit "
                f"a ({self.out_features}, {self.in_features}) layer; expected A (r, {self.in_features}) and "
                f"B ({self.out_features}, r)"
            )
        self.adapters[name] = weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for _, rows, w in self.routing.active(self.adapters, x.shape[0]):
            xr = x.index_select(0, rows)  # (n, T, in)
            delta = (xr @ w.A.T.to(x.dtype)) @ w.B.T.to(x.dtype)  # (n, T, r) -> (n, T, out)
            y = y.index_add(0, rows, delta * w.scale)
        return y

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.adapters)}"


__all__ = ["LoRARouting", "LoRAWeights", "MultiLoRALinear"]
