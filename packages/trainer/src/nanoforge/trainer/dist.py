"""The few data-parallel operations the recipes need, identical in one process and under DDP.

A recipe draws the same *global* batch on every rank (the samplers share a seed) and keeps its rank's slice
(``shard``), so N workers see exactly the rows one process would; gradients are averaged by DDP, losses
are averaged with ``mean`` for logging, and only rank 0 (``is_main``) writes metrics, checkpoints and the
final model. ``Dist()`` is the single-process default: every call is a no-op there.

Whoever starts the processes (``ray_launcher`` under Ray Train, or torchrun) creates the process group;
``Dist.from_env()`` then reads rank and world size from ``torch.distributed``.
What it does not do: start processes, pick backends, or import Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn as nn


@dataclass(frozen=True)
class Dist:
    """This process's rank and the number of ranks."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Dist:
        """Read rank / world size from an initialised ``torch.distributed`` process group (else one process)."""
        if torch_dist.is_available() and torch_dist.is_initialized():
            return cls(torch_dist.get_rank(), torch_dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (dim 0 must divide by the world size)."""
        if self.world_size == 1:
            return t
        if t.size(0) % self.world_size:
            raise ValueError(
                f"train.batch_size={t.size(0)} must be divisible by the number of workers ({self.world_size})"
            )
        return t.chunk(self.world_size)[self.rank]

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` when there are several ranks (gradients averaged in backward)."""
        if self.world_size == 1:
            return model
        return nn.parallel.DistributedDataParallel(model)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a tensor over ranks (a copy; the input is untouched)."""
        out = value.detach().clone()
        if self.world_size > 1:
            torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out

    def mean(self, value: float) -> float:
        """Mean of a Python float over ranks."""
        if self.world_size == 1:
            return value
        return float(self.sum(torch.tensor([value], dtype=torch.float64))[0]) / self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()
