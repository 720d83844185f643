"""``serve batch --ray``: the same offline generation spread over a pool of Ray actors with Ray Data.

What it does: puts the checked request records in a Ray Dataset (one row = input index + the record as a
JSON string, so ragged fields like chat messages stay intact), runs ``map_batches`` with a callable class
and ``concurrency=num_actors`` (an actor pool: each actor loads the model ONCE in its constructor and keeps
it), lets each actor run its batch through its own continuous-batching engine (``batch.generate_records``),
and returns the results in input order. This is the only module that imports ``ray``.
What it does not do: start a cluster for you beyond ``ray.init()`` with defaults when none is running
(``RAY_ADDRESS`` picks an existing one), or write files (``batch.run_batch``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import ray


class _GeneratorActor:
    """Map-batches UDF: loads the model once per actor and generates a batch of records."""

    def __init__(self, model_dir: str, load: dict[str, Any]) -> None:
        from nanoforge.inference_server.text import ServingModel

        self.sm = ServingModel.load(model_dir, **load)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from nanoforge.inference_server.batch import generate_records

        indices = [int(i) for i in batch["index"]]
        # A record without an id gets its global input index, as in the in-process path.
        records = [{"id": i, **json.loads(str(s))} for i, s in zip(indices, batch["record"])]
        results = generate_records(self.sm, records)
        return {"index": np.asarray(indices), "result": np.asarray([json.dumps(r) for r in results])}


def generate_with_ray(
    model_dir: str | Path,
    records: list[dict[str, Any]],
    *,
    num_actors: int = 1,
    load: dict[str, Any] | None = None,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Generate ``records`` on ``num_actors`` Ray actors; results in input order.

    Raises:
        ValueError: ``num_actors`` or ``batch_size`` below 1.
    """
    if not isinstance(num_actors, int) or num_actors < 1:
        raise ValueError(f"num_actors={num_actors!r} must be an int >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    if not records:
        return []
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    rows = [{"index": i, "record": json.dumps(r)} for i, r in enumerate(records)]
    ds = ray.data.from_items(rows).map_batches(
        _GeneratorActor,
        fn_constructor_kwargs={"model_dir": str(model_dir), "load": dict(load or {})},
        batch_size=batch_size,
        concurrency=num_actors,
        batch_format="numpy",
    )
    out = sorted(ds.take_all(), key=lambda row: int(row["index"]))
    return [json.loads(str(row["result"])) for row in out]


__all__ = ["generate_with_ray"]
