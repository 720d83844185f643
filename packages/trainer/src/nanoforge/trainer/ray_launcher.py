"""Ray for the trainer: recipes on Ray Train workers (TorchTrainer, DDP), and ``prepare`` as Ray Data tasks.

The only module that imports Ray (an optional extra: ``pip install nanoforge-trainer[ray]``).
``run_ray("pretrain" | "finetune", cfg, run_dir, num_workers=N)`` starts (or joins, with ``address``) a
Ray cluster and runs the *same* recipe function on N workers. Ray Train creates the torch process group;
the recipe reads it through ``Dist.from_env()``, draws the global batch on every rank and trains on its
slice under DDP, so the losses match a single-process run on the same global batch.

Checkpoints: rank 0 writes the recipe's own atomic checkpoints into ``run_dir`` (on a multi-node cluster
``run_dir`` must be shared storage, e.g. NFS); Ray's bookkeeping goes to ``run_dir/ray``. When a worker
dies, ``FailureConfig(max_failures=K)`` restarts the worker group and every worker resumes from the newest
checkpoint in ``run_dir`` — so a run survives up to K failures, losing at most ``checkpoint.interval`` steps.

``prepare_ray(inputs, tokenizer, out_dir)`` is ``prepare.prepare`` with its parts encoded by Ray Data: the
blocks still to do become a dataset, ``map`` reads each block's text, ``map_batches`` on an actor pool (the
tokenizer is built once per actor) encodes it with the same pure ``prepare.encode_text``, and the driver
writes each part as it arrives and joins them, so the output is byte for byte the local path's. Workers
must be able to read the input paths (shared storage on a multi-node cluster); the output is written by
the driver only.

What it does not do: hyper-parameter search, or autoscaling.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from nanoforge.tokenizer import Tokenizer
from nanoforge.trainer.checkpoint import latest_checkpoint
from nanoforge.trainer.dist import Dist
from nanoforge.trainer.metrics import METRICS_FILE
from nanoforge.trainer.prepare import (
    BLOCK_BYTES,
    SPLITS,
    PartJob,
    encode_text,
    prepare,
    read_block,
    token_dtype,
    write_part,
)

RECIPES = ("pretrain", "finetune")
FAULT_FILE = ".ray-fault-injected"  # marker of the one-off failure ``fail_at_step`` injects (tests, demos)


def connect(address: str | None, num_workers: int) -> None:
    """Join ``address`` ("auto", "ray://host:10001", ...), else the running Ray, else start a local one."""
    if ray.is_initialized():
        return
    if address is None:
        ray.init(include_dashboard=False, num_cpus=max(num_workers, os.cpu_count() or 1))
    else:
        ray.init(address=address)


def _recipe(name: str) -> tuple[Any, Any]:
    """(config_from_dict, run) of a recipe, imported inside the worker."""
    if name == "pretrain":
        from nanoforge.trainer import pretrain
        from nanoforge.trainer.config import config_from_dict

        return config_from_dict, pretrain.run
    from nanoforge.trainer import finetune
    from nanoforge.trainer.finetune_config import finetune_config_from_dict

    return finetune_config_from_dict, finetune.run


def _train_loop(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the recipe, resuming from ``run_dir`` when a checkpoint is there."""
    from_dict, run = _recipe(loop_config["recipe"])
    cfg = from_dict(loop_config["cfg"])
    run_dir = Path(loop_config["run_dir"])
    dist = Dist.from_env()
    on_step = None
    fail_at = loop_config.get("fail_at_step")
    if fail_at is not None and dist.rank == dist.world_size - 1 and not (run_dir / FAULT_FILE).exists():

        def on_step(step: int) -> None:
            if step >= fail_at and latest_checkpoint(run_dir) is not None:
                (run_dir / FAULT_FILE).write_text(f"worker {dist.rank} killed after step {step}\n")
                os._exit(1)  # an abrupt death, as a lost node would be

    resume = loop_config["resume"] or latest_checkpoint(run_dir) is not None  # a restarted attempt continues
    run(cfg, run_dir, resume=resume, dist=dist, on_step=on_step)  # rank 0 logs the summary in metrics.jsonl


def run_ray(
    recipe: str,
    cfg: Any,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    num_workers: int = 2,
    address: str | None = None,
    max_failures: int = 2,
    use_gpu: bool = False,
    fail_at_step: int | None = None,
) -> dict[str, Any]:
    """Run ``recipe`` ("pretrain" | "finetune") with ``cfg`` on ``num_workers`` Ray Train workers.

    Args:
        recipe: which recipe function runs on the workers.
        cfg: its validated config (``PretrainConfig`` / ``FinetuneConfig``).
        run_dir: the run directory (shared storage on a multi-node cluster).
        resume: continue from the newest checkpoint in ``run_dir``.
        num_workers: DDP workers; ``train.batch_size`` must be divisible by it.
        address: a Ray cluster to join ("auto", "ray://host:10001", ...); None = the running or a new local Ray.
        max_failures: worker-group restarts before the run fails.
        use_gpu: one GPU per worker (nccl) instead of CPU (gloo).
        fail_at_step: fault injection for tests: the last worker dies once, after the checkpoint at this step.

    Returns:
        Rank 0's final summary from ``metrics.jsonl`` (step, tokens/s, wall seconds, ``eval`` losses, paths).

    Raises:
        ValueError: bad recipe name / worker count / batch split, or checkpoints present without ``resume``.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r} is not supported; accepted: {', '.join(RECIPES)}")
    if num_workers < 1:
        raise ValueError(f"--num-workers={num_workers} must be >= 1")
    if cfg.train.batch_size % num_workers:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by --num-workers={num_workers} "
            "(each worker trains on an equal slice of the global batch)"
        )
    run_dir = Path(run_dir).resolve()
    ckpt = latest_checkpoint(run_dir)
    if resume and ckpt is None:
        raise ValueError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; start without --resume")
    if not resume and ckpt is not None:
        raise ValueError(
            f"{run_dir} already holds checkpoints (step {ckpt.step}); pass --resume or choose a new --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAULT_FILE).unlink(missing_ok=True)
    connect(address, num_workers)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "recipe": recipe,
            "cfg": cfg.to_dict(),
            "run_dir": str(run_dir),
            "resume": resume,
            "fail_at_step": fail_at_step,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir / "ray"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"Ray Train run failed: {result.error}") from result.error
    return _summary(run_dir)


def _summary(run_dir: Path) -> dict[str, Any]:
    """The run's last ``done`` record plus its last evaluation, read from rank 0's ``metrics.jsonl``."""
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    done = [r for r in records if r["kind"] == "done"]
    if not done:
        raise RuntimeError(f"{run_dir / METRICS_FILE}: the Ray run ended without a 'done' record")
    summary = {k: v for k, v in done[-1].items() if k != "kind"}
    summary["eval"] = {
        k: v for k, v in [r for r in records if r["kind"] == "eval"][-1].items() if k not in ("kind", "step")
    }
    summary["ray_failures_injected"] = int((run_dir / FAULT_FILE).exists())
    return summary


# ------------------------------------------------------------------------------- prepare on Ray Data
def _read(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data ``map``: one block job (a JSON ``PartJob``) -> the job, the block's text, or an error line.

    Bad input (not UTF-8, bad JSONL) travels as a string so that the driver raises one clear ``ValueError``
    instead of a Ray task traceback.
    """
    try:
        return {"job": row["job"], "text": read_block(PartJob(**json.loads(row["job"]))), "error": ""}
    except ValueError as e:
        return {"job": row["job"], "text": "", "error": str(e)}


class _Encode:
    """Ray Data ``map_batches`` callable on an actor pool: the tokenizer is built once per actor."""

    def __init__(self, tokenizer: dict[str, Any]) -> None:
        from nanoforge.tokenizer.io import native_from_dict

        self.tok = native_from_dict(tokenizer, "prepare --ray worker")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {"index": [], "stats": [], "error": [], **{s: [] for s in SPLITS}}
        for i in range(len(batch["job"])):
            job = PartJob(**json.loads(str(batch["job"][i])))
            error, stats, arrays = str(batch["error"][i]), "", {s: b"" for s in SPLITS}
            if not error:
                try:
                    ids, counts = encode_text(job, str(batch["text"][i]), self.tok)
                    stats, arrays = json.dumps(counts), {s: ids[s].tobytes() for s in SPLITS}
                except ValueError as e:
                    error = str(e)
            out["index"].append(job.index)
            out["stats"].append(stats)
            out["error"].append(error)
            for s in SPLITS:
                out[s].append(arrays[s])
        return {k: np.asarray(v, dtype=np.int64 if k == "index" else object) for k, v in out.items()}


def ray_runner(address: str | None = None) -> Callable[[list[PartJob], Tokenizer, int], Iterator]:
    """A ``prepare`` part runner that encodes on Ray Data (``workers`` = actors in the encoding pool)."""

    def run(todo: list[PartJob], tok: Tokenizer, workers: int) -> Iterator[tuple[int, dict[str, Any]]]:
        if not todo:
            return
        from nanoforge.tokenizer.io import to_native_dict

        connect(address, workers)
        ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI draws its own
        by_index = {job.index: job for job in todo}
        dtype = token_dtype(tok.vocab_size)
        ds = ray.data.from_items(
            [{"job": json.dumps(dataclasses.asdict(j))} for j in todo], override_num_blocks=len(todo)
        )
        encoded = ds.map(_read).map_batches(
            _Encode,
            fn_constructor_kwargs={"tokenizer": to_native_dict(tok)},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo))),
            num_cpus=1,
        )
        for row in encoded.iter_rows():
            if row["error"]:
                raise ValueError(row["error"])
            job = by_index[int(row["index"])]
            arrays = {s: np.frombuffer(row[s], dtype=dtype) for s in SPLITS}
            yield job.index, write_part(job, arrays, json.loads(row["stats"]))

    return run


def prepare_ray(
    inputs: Sequence[str | os.PathLike[str]],
    tokenizer: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    doc_split: str = "file",
    num_workers: int = 2,
    address: str | None = None,
    on_part: Callable[[int, int], None] | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> dict[str, Any]:
    """``prepare.prepare`` with the blocks encoded as Ray Data tasks; same arguments, same output bytes.

    Args:
        num_workers: encoding actors.
        address: a Ray cluster to join; None = the running or a new local Ray.
        (the others: see ``prepare.prepare``)

    Returns:
        The manifest.
    """
    if num_workers < 1:
        raise ValueError(f"--num-workers={num_workers} must be >= 1")
    return prepare(
        inputs,
        tokenizer,
        out_dir,
        val_fraction=val_fraction,
        doc_split=doc_split,
        workers=num_workers,
        on_part=on_part,
        block_bytes=block_bytes,
        runner=ray_runner(address),
    )
