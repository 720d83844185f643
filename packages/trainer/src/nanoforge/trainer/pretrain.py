"""The pretraining recipe, top to bottom: setup, load, train, save, cleanup.

``run(cfg, run_dir)`` is the whole thing; read it in one sitting. One optimizer step is
``grad_accum`` micro-batches of ``batch_size x block_size`` random windows, a loss under autocast
(``AUTOCAST``), backward (through a grad scaler for fp16), global-norm clipping, the scheduled lr,
AdamW. Every ``eval_interval`` steps (and at 0 and the end) the mean loss on fixed batches of train and
val is logged with val bits per byte; every ``checkpoint.interval`` steps (and at the end) a checkpoint is
written; the run ends by exporting ``RUN/final`` as a normal model directory with the tokenizer beside it.

Exact resume: the checkpoint holds weights, optimizer state, all RNG states and the data sampler's
generator; evaluation uses its own generators, so on CPU a killed-and-resumed run ends with the same
weights, bit for bit, as an uninterrupted one.

Data parallel (``dist``, e.g. under Ray Train): every rank draws the same global batch and trains on its
slice under DDP; only rank 0 writes the config, metrics, checkpoints and the final model.

What it does not do: SFT / LoRA (``finetune``), start workers (``ray_launcher``), or prepare data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from nanoforge.cli import progress
from nanoforge.core_model.checkpoint import atomic_write_bytes, save_model
from nanoforge.core_model.info import flops_per_token
from nanoforge.core_model.model import GPT, build_model
from nanoforge.trainer.checkpoint import latest_checkpoint, load_checkpoint, remove_partial, save_checkpoint
from nanoforge.trainer.config import PretrainConfig, config_from_dict
from nanoforge.trainer.data import Batches, TokenData, open_data
from nanoforge.trainer.dist import Dist
from nanoforge.trainer.metrics import PEAK_FLOPS, MetricsLog, bits_per_byte, mfu
from nanoforge.trainer.optim import SCHEDULES, ScheduleArgs, build_adamw

if TYPE_CHECKING:
    from nanoforge.trainer.finetune_config import FinetuneConfig

CONFIG_FILE = "config.yaml"
FINAL_DIR = "final"


class NonFiniteLoss(ValueError):
    """The loss became NaN or inf; training stopped and the last good checkpoint was kept."""


def _autocast(dtype: torch.dtype) -> Callable[[torch.device], contextlib.AbstractContextManager]:
    return lambda device: torch.autocast(device_type=device.type, dtype=dtype)


#: train.dtype -> a context-manager factory for the forward pass.
AUTOCAST: dict[str, Callable[[torch.device], contextlib.AbstractContextManager]] = {
    "float32": lambda device: contextlib.nullcontext(),
    "bfloat16": _autocast(torch.bfloat16),
    "float16": _autocast(torch.float16),
}


C = TypeVar("C", PretrainConfig, "FinetuneConfig")


def resolve_precision(cfg: C, device: torch.device) -> C:
    """``cfg`` with a concrete ``train.dtype`` for ``device`` (``auto`` resolved, so the run dir's config
    records what ran). fp16 autocast + the grad scaler run on CPU too (same code path as CUDA, so tests
    cover it), but CPUs without fp16 arithmetic emulate it slowly: that gets a warning naming the CPU choices."""
    dtype = resolve_dtype(cfg.train.dtype, device)
    if dtype == "float16" and device.type != "cuda":
        warnings.warn(
            f"train.dtype='float16' on {device.type}: fp16 autocast with a grad scaler works but is usually much "
            "slower than float32 off CUDA; on CPU use float32 (default) or bfloat16",
            stacklevel=3,
        )
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dtype=dtype))


def resolve_dtype(name: str, device: torch.device) -> str:
    """``auto`` -> bfloat16 on a CUDA device that supports it, else float32 (most CPUs lack fast bf16 math;
    ask for bfloat16 explicitly on one that has it); any other name is returned as is."""
    if name != "auto":
        return name
    return "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but torch sees no CUDA device; accepted here: auto, cpu")
    return torch.device(name)


def pad_vocab(vocab_size: int, multiple: int = 64) -> int:
    """Round the tokenizer's vocabulary up to a multiple of 64 (faster matmuls): 4097 -> 4160, 256 -> 256."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


def resolve_config(cfg: PretrainConfig, data: TokenData) -> PretrainConfig:
    """Fill ``model.vocab_size`` from the tokenizer when null and check the model can take the data."""
    model = dict(cfg.model)
    if model.get("vocab_size") is None:
        model["vocab_size"] = pad_vocab(data.vocab_size)
    if model["vocab_size"] < data.vocab_size:
        raise ValueError(
            f"model.vocab_size={model['vocab_size']} is smaller than the data's tokenizer vocabulary ({data.vocab_size}); "
            "set it >= that or null"
        )
    raw = cfg.to_dict()
    raw["model"] = model
    return config_from_dict(raw)


def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats."""
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))  # (B*T, V) vs (B*T,)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: TokenData, cfg: PretrainConfig, device: torch.device
) -> dict[str, float]:
    """Mean loss over ``eval_iters`` fixed batches of each split (same batches every time), plus val bpb."""
    t = cfg.train
    model.eval()
    out: dict[str, float] = {}
    for offset, split in enumerate(("train", "val")):
        batches = Batches(data.splits[split], t.batch_size, t.block_size, t.seed + 1 + offset, split)
        losses = []
        for _ in range(t.eval_iters):
            x, y = batches.next(device)
            with AUTOCAST[t.dtype](device):
                losses.append(loss_fn(model, x, y).item())
        out[f"{split}_loss"] = float(np.mean(losses))
    out["val_bpb"] = bits_per_byte(out["val_loss"], data.bytes_per_token("val"))
    model.train()
    return out


def run(
    cfg: PretrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    dist: Dist | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Pretrain a model as ``cfg`` says, writing everything under ``run_dir``.

    Args:
        cfg: a validated config (``load_config``).
        run_dir: the run directory (config, metrics, checkpoints, final model).
        resume: continue from the newest checkpoint in ``run_dir`` (an error when there is none).
        on_log: called with every metrics record (tests, services; rank 0 only).
        dist: data-parallel context (default: one process).
        on_step: called with the step number after every optimizer step (and checkpoint), on every rank.

    Returns:
        A summary: steps, last evaluation, tokens/s, wall seconds, path of the final model.

    Raises:
        ValueError: bad data / tokenizer / checkpoint / config; ``NonFiniteLoss`` when the loss is NaN/inf.
    """
    # ------------------------------------------------------------------------------------- setup
    dist = dist or Dist()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        remove_partial(run_dir)  # a save interrupted by a kill: never a checkpoint, just litter
    ckpt = latest_checkpoint(run_dir)
    if resume and ckpt is None:
        raise ValueError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; start without --resume")
    if not resume and ckpt is not None:
        raise ValueError(
            f"{run_dir} already holds checkpoints (step {ckpt.step}); pass --resume or choose a new --out"
        )
    device = resolve_device(cfg.train.device)
    cfg = resolve_precision(cfg, device)
    t = cfg.train
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    torch.use_deterministic_algorithms(t.deterministic, warn_only=device.type == "cuda")
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    random.seed(t.seed)
    log: MetricsLog | None = None
    try:
        # ---------------------------------------------------------------------------------- load
        if not cfg.data.dir:
            raise ValueError(
                "data.dir is empty; set data.dir=PATH (a directory written by `nanoforge train prepare`)"
            )
        data = open_data(cfg.data.dir, cfg.data.tokenizer)
        cfg = resolve_config(cfg, data)
        model_config = cfg.model_config()
        model: GPT = build_model(model_config).to(device)
        optimizer = build_adamw(
            model,
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
            eps=cfg.optim.eps,
            impl=cfg.optim.impl,
            device=device,
        )
        scaler = torch.amp.GradScaler(device.type, t.fp16_init_scale, enabled=t.dtype == "float16")
        train_batches = Batches(data.splits["train"], t.batch_size, t.block_size, t.seed, "train")
        Batches(data.splits["val"], t.batch_size, t.block_size, t.seed, "val")  # fail now if val is too small
        step, tokens_seen = 0, 0
        if ckpt is not None:
            train_batches.set_state(load_checkpoint(ckpt, model, optimizer, scaler=scaler))
            step, tokens_seen = ckpt.step, int(ckpt.meta.get("tokens_seen", 0))
        # saved once the checkpoint (if any) has accepted it, so a refused resume leaves the run's own config
        if dist.is_main:
            atomic_write_bytes(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
        fwd_model = dist.wrap(model)
        if t.compile:
            fwd_model = cast(torch.nn.Module, torch.compile(fwd_model))  # an OptimizedModule
        sched = SCHEDULES[cfg.schedule.name]
        sched_args = ScheduleArgs(
            lr=cfg.optim.lr,
            min_lr=cfg.schedule.min_lr,
            warmup_iters=cfg.schedule.warmup_iters,
            decay_iters=cfg.schedule.decay_iters or t.max_iters,
            max_iters=t.max_iters,
            decay_frac=cfg.schedule.decay_frac,
        )
        tokens_per_step = t.batch_size * t.block_size * t.grad_accum
        flops_tok = flops_per_token(model_config, t.block_size)["training"]
        peak = cfg.log.peak_flops or PEAK_FLOPS.get(device.type, PEAK_FLOPS["cpu"])
        if dist.is_main:
            log = MetricsLog(run_dir, tensorboard=cfg.log.tensorboard, resume_step=step if ckpt else None)

        def record(kind: str, at: int, **values: Any) -> None:
            if log is None:  # ranks other than 0 log nothing
                return
            log.write(kind, at, **values)
            if on_log:
                on_log({"kind": kind, "step": at, **values})

        if log is not None and log.tb is None and cfg.log.tensorboard:
            record("note", step, message=log.tb_note or "")
        last_eval: dict[str, float] = dict(ckpt.meta.get("eval", {})) if ckpt else {}
        if step == 0:
            last_eval = evaluate(fwd_model, data, cfg, device)
            record("eval", 0, **last_eval)

        # ---------------------------------------------------------------------------------- train
        model.train()
        wall0 = time.perf_counter()
        window_t0, window_steps, run_tokens = time.perf_counter(), 0, 0
        tok_s = 0.0
        with progress(disable=None if (cfg.log.progress and dist.is_main) else True) as bar:
            task = bar.add_task("pretrain", total=t.max_iters, completed=step, info="")
            while step < t.max_iters:
                lr = sched(step, sched_args)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = 0.0
                for _ in range(t.grad_accum):
                    x, y = train_batches.next(device)  # the global micro-batch, identical on every rank
                    x, y = dist.shard(x), dist.shard(y)  # (B / world, T) each
                    with AUTOCAST[t.dtype](device):
                        loss = loss_fn(fwd_model, x, y) / t.grad_accum
                    scaler.scale(loss).backward()
                    loss_sum += loss.item()
                loss_sum = dist.mean(loss_sum)  # equal rows per rank: the global batch's mean loss
                if not math.isfinite(loss_sum):
                    last = latest_checkpoint(run_dir)
                    kept = (
                        f"the last good checkpoint is {last.path}"
                        if last
                        else "no checkpoint was written yet"
                    )
                    raise NonFiniteLoss(
                        f"loss is {loss_sum} at step {step}; stopped without saving ({kept}). "
                        f"Lower optim.lr (now {cfg.optim.lr}) or check the data"
                    )
                if t.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += tokens_per_step
                run_tokens += tokens_per_step
                window_steps += 1

                if step % t.log_interval == 0 or step == t.max_iters:
                    dt = time.perf_counter() - window_t0
                    tok_s = window_steps * tokens_per_step / dt if dt > 0 else 0.0
                    window_t0, window_steps = time.perf_counter(), 0
                    util = mfu(tok_s, flops_tok, peak)
                    record(
                        "train", step, loss=loss_sum, lr=lr, tokens_per_s=tok_s, mfu=util, tokens=tokens_seen
                    )
                    bar.update(
                        task, info=f"loss {loss_sum:.4f} lr {lr:.2e} {tok_s:,.0f} tok/s MFU {util:.1%}"
                    )
                if step % t.eval_interval == 0 or step == t.max_iters:
                    last_eval = evaluate(fwd_model, data, cfg, device)
                    record("eval", step, **last_eval)
                if (step % cfg.checkpoint.interval == 0 or step == t.max_iters) and dist.is_main:
                    extra = {"tokens_seen": tokens_seen, "eval": last_eval}
                    save_checkpoint(
                        run_dir,
                        step,
                        model,
                        optimizer,
                        train_batches.get_state(),
                        extra,
                        cfg.checkpoint.keep_last,
                        scaler=scaler,
                    )
                if step % cfg.checkpoint.interval == 0 or step == t.max_iters:
                    dist.barrier()  # no rank runs ahead of a checkpoint it may have to resume from
                if on_step is not None:
                    on_step(step)
                bar.update(task, completed=step)
        wall = time.perf_counter() - wall0

        # ---------------------------------------------------------------------------------- save
        final = run_dir / FINAL_DIR
        eot = data.manifest.get("eot_id")
        if dist.is_main:
            save_model(model, final, generation_config={"eos_token_id": eot} if eot is not None else None)
            data.tokenizer.save(final / "tokenizer")
        summary = {
            "step": step,
            "eval": last_eval,
            "tokens_seen": tokens_seen,
            "tokens_per_s": run_tokens / wall if wall > 0 else 0.0,
            "wall_s": wall,
            "final": str(final),
            "tensorboard": (log.tb_note or "written") if log is not None else "written by rank 0",
        }
        record(
            "done",
            step,
            **{k: v for k, v in summary.items() if k != "step" and isinstance(v, (int, float, str))},
        )
        dist.barrier()
        return summary
    finally:
        # ---------------------------------------------------------------------------------- cleanup
        if log is not None:
            log.close()
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def load_run_config(run_dir: str | Path) -> PretrainConfig:
    """The resolved config a run saved (for ``--resume`` without ``--config``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path}: not found; pass --config to resume a run that has no saved config")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return config_from_dict(raw)
