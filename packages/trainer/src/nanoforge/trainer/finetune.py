"""The fine-tuning recipe (SFT, full or LoRA), top to bottom: setup, load, train, save, cleanup.

``run(cfg, run_dir)``: load a model (ours or a HF checkpoint) and its tokenizer (a chat template is
attached when it has none), render and pack the JSONL conversations (``sft_data``), optionally attach LoRA
adapters (``adapters.LORA_IMPLS[lora.impl]``; by default the embedding rows of the special tokens the chats
use train with them, ``lora.trainable_tokens``), and train with the pretraining recipe's pieces — AdamW with
decay on 2-D weights, the lr schedules, clipping, accumulation, autocast, atomic checkpoints with exact
resume. The loss is cross-entropy over assistant tokens only: per micro-batch, the sum over label tokens
divided by the number of label tokens in the *global* micro-batch, so N data-parallel workers (``dist``)
compute exactly the gradient one process would.

Outputs: ``RUN/adapter/`` (PEFT format) for LoRA, ``RUN/final/`` (a normal model dir with the tokenizer)
for full SFT or ``lora.merge=true``, ``RUN/tokenizer/`` always, metrics and checkpoints as in pretraining.
What it does not do: pretraining on raw text (``pretrain``), RLHF / DPO, multi-adapter serving.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from nanoforge.cli import progress
from nanoforge.core_model.checkpoint import atomic_write_bytes, load_weights, model_state_dict, save_model
from nanoforge.core_model.hf.registry import load_any_model
from nanoforge.tokenizer.chat import add_chat_template
from nanoforge.tokenizer.hf import load_any_tokenizer
from nanoforge.trainer.adapters import LORA_IMPLS, base_gpt
from nanoforge.trainer.checkpoint import latest_checkpoint, load_checkpoint, remove_partial, save_checkpoint
from nanoforge.trainer.dist import Dist
from nanoforge.trainer.finetune_config import FinetuneConfig, finetune_config_from_dict
from nanoforge.trainer.metrics import MetricsLog
from nanoforge.trainer.optim import SCHEDULES, ScheduleArgs, build_adamw
from nanoforge.trainer.pretrain import (
    AUTOCAST,
    CONFIG_FILE,
    FINAL_DIR,
    NonFiniteLoss,
    resolve_device,
    resolve_precision,
)
from nanoforge.trainer.sft_data import (
    IGNORE_INDEX,
    Packed,
    PackedBatches,
    pack,
    read_jsonl,
    render_all,
    split_val,
)

ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"


def masked_loss_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (nats) over the label tokens (``y != -100``)."""
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )  # (B*T, V) vs (B*T,)


def load_tokenizer_for(cfg: FinetuneConfig, vocab_size: int) -> Any:
    """The tokenizer (``data.tokenizer`` or ``<base.model>/tokenizer``), with a chat template, fitting the model."""
    spec = cfg.data.tokenizer or str(Path(cfg.base.model) / TOKENIZER_DIR)
    try:
        tok = load_any_tokenizer(spec)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer {spec}: {e}; set data.tokenizer=DIR") from e
    if getattr(tok, "chat_template", None) is None:
        tok = add_chat_template(tok, cfg.data.chat_template)
    if tok.vocab_size > vocab_size:
        raise ValueError(
            f"tokenizer {spec} has {tok.vocab_size} ids (chat specials included) but the model's vocab_size is "
            f"{vocab_size}; use a tokenizer trained with the chat special tokens or a model with a larger vocab"
        )
    return tok


def save_tokenizer(tok: Any, directory: Path) -> None:
    """Save a native tokenizer, or copy a HF tokenizer's files (``tokenizer.json`` + its config) into ``directory``."""
    if hasattr(tok, "save"):
        tok.save(directory)
        return
    source = Path(tok.source)
    directory.mkdir(parents=True, exist_ok=True)
    for f in (source, source.parent / "tokenizer_config.json"):
        if f.is_file():
            atomic_write_bytes(directory / f.name, f.read_bytes())


def separator_id(tok: Any) -> int:
    """End-of-text if the tokenizer has it, else the chat template's end-of-turn token."""
    specials = tok.special_tokens
    for name in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>"):
        if name in specials:
            return int(specials[name])
    raise ValueError(
        f"tokenizer has none of <|endoftext|>, <|im_end|>, <|eot_id|>; specials: {sorted(specials)}"
    )


def special_ids_in(tok: Any, packed: Packed) -> list[int]:
    """The tokenizer's special-token ids that occur in the packed data (what ``lora.trainable_tokens=special``
    trains: the chat template's tokens, the separator)."""
    present = set(torch.unique(packed.x).tolist()) | set(torch.unique(packed.y).tolist())
    return sorted(i for i in tok.special_tokens.values() if i in present)


@torch.no_grad()
def evaluate(
    model: nn.Module, splits: dict[str, Packed], cfg: FinetuneConfig, device: torch.device
) -> dict[str, float]:
    """Token-weighted mean assistant-token loss over the first ``eval_iters * batch_size`` blocks of each split."""
    t = cfg.train
    model.eval()
    out = {}
    for name, packed in splits.items():
        total, count = 0.0, 0
        n = min(len(packed.x), t.eval_iters * t.batch_size)
        for i in range(0, n, t.batch_size):
            x, y = packed.x[i : i + t.batch_size].to(device), packed.y[i : i + t.batch_size].to(device)
            with AUTOCAST[t.dtype](device):
                total += masked_loss_sum(model, x, y).item()
            count += int((y != IGNORE_INDEX).sum())
        out[f"{name}_loss"] = total / max(count, 1)
    model.train()
    return out


def run(
    cfg: FinetuneConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    dist: Dist | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base.model`` on ``data.train`` as ``cfg`` says, writing everything under ``run_dir``.

    Args:
        cfg: a validated config (``load_finetune_config``).
        run_dir: the run directory.
        resume: continue from the newest checkpoint (an error when there is none).
        on_log: called with every metrics record (rank 0 only).
        dist: data-parallel context (default: one process).
        on_step: called with the step number after every optimizer step (and checkpoint), on every rank.

    Returns:
        A summary: steps, last evaluation, trainable/total parameters, tokens/s, output paths.
    """
    # ------------------------------------------------------------------------------------- setup
    dist = dist or Dist()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        remove_partial(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if resume and ckpt is None:
        raise ValueError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; start without --resume")
    if not resume and ckpt is not None:
        raise ValueError(
            f"{run_dir} already holds checkpoints (step {ckpt.step}); pass --resume or choose a new --out"
        )
    if not cfg.base.model:
        raise ValueError(
            "base.model is empty; set base.model=DIR (a model saved by nanoforge or a HF model dir)"
        )
    if not cfg.data.train:
        raise ValueError("data.train is empty; set data.train=FILE.jsonl")
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
        gpt = load_any_model(cfg.base.model).to(device).train()
        tok = load_tokenizer_for(cfg, gpt.config.vocab_size)
        if t.block_size > gpt.config.max_seq_len:
            raise ValueError(
                f"train.block_size={t.block_size} exceeds the model's max_seq_len={gpt.config.max_seq_len}"
            )
        convs = read_jsonl(cfg.data.train)
        train_convs, val_convs = (
            (convs, read_jsonl(cfg.data.val)) if cfg.data.val else split_val(convs, cfg.data.val_fraction)
        )
        sep = separator_id(tok)
        splits = {"train": pack(render_all(tok, train_convs), t.block_size, sep)}
        if val_convs:
            splits["val"] = pack(render_all(tok, val_convs), t.block_size, sep)
        if splits["train"].loss_tokens == 0:
            raise ValueError(f"{cfg.data.train}: no assistant tokens to train on")
        lora_impl = LORA_IMPLS[cfg.lora.impl] if cfg.base.method == "lora" else None
        settings = cfg.lora.settings(special_ids_in(tok, splits["train"]))
        module: nn.Module = lora_impl.attach(gpt, settings) if lora_impl else gpt
        trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
        n_trainable, n_total = sum(p.numel() for p in trainable.values()), base_gpt(module).num_parameters()
        optimizer = build_adamw(
            module,
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
            eps=cfg.optim.eps,
            impl=cfg.optim.impl,
            device=device,
        )
        scaler = torch.amp.GradScaler(device.type, t.fp16_init_scale, enabled=t.dtype == "float16")
        batches = PackedBatches(splits["train"], t.batch_size, t.seed)

        def ckpt_weights() -> dict[str, torch.Tensor]:
            return dict(trainable) if lora_impl else model_state_dict(gpt)

        def load_ckpt_weights(tensors: dict[str, torch.Tensor], source: str) -> None:
            if not lora_impl:
                return load_weights(gpt, tensors, source)
            if set(tensors) != set(trainable):
                raise ValueError(f"{source}: adapter tensors do not match this LoRA config (lora.* changed?)")
            with torch.no_grad():
                for name, p in trainable.items():
                    p.copy_(tensors[name])

        step, tokens_seen = 0, 0
        if ckpt is not None:
            batches.set_state(load_checkpoint(ckpt, gpt, optimizer, load_ckpt_weights, scaler))
            step, tokens_seen = ckpt.step, int(ckpt.meta.get("tokens_seen", 0))
        if dist.is_main:
            atomic_write_bytes(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
            log = MetricsLog(run_dir, tensorboard=cfg.log.tensorboard, resume_step=step if ckpt else None)
        fwd = dist.wrap(module)
        sched = SCHEDULES[cfg.schedule.name]
        sched_args = ScheduleArgs(
            lr=cfg.optim.lr,
            min_lr=cfg.schedule.min_lr,
            warmup_iters=cfg.schedule.warmup_iters,
            decay_iters=cfg.schedule.decay_iters or t.max_iters,
            max_iters=t.max_iters,
            decay_frac=cfg.schedule.decay_frac,
        )

        def record(kind: str, at: int, **values: Any) -> None:
            if log is not None:
                log.write(kind, at, **values)
                if on_log:
                    on_log({"kind": kind, "step": at, **values})

        record(
            "note",
            step,
            message=f"{cfg.base.method}: {n_trainable:,} of {n_total:,} parameters train",
            trainable=n_trainable,
        )
        last_eval: dict[str, float] = dict(ckpt.meta.get("eval", {})) if ckpt else {}
        if step == 0:
            last_eval = evaluate(module, splits, cfg, device)
            record("eval", 0, **last_eval)

        # ---------------------------------------------------------------------------------- train
        module.train()
        wall0, run_tokens, eval_s = time.perf_counter(), 0, 0.0  # tokens/s leaves evaluation time out
        with progress(disable=None if (cfg.log.progress and dist.is_main) else True) as bar:
            task = bar.add_task(cfg.base.method, total=t.max_iters, completed=step, info="")
            while step < t.max_iters:
                lr = sched(step, sched_args)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum, step_tokens = 0.0, 0
                for _ in range(t.grad_accum):
                    x, y = batches.next(device)  # the global micro-batch, identical on every rank
                    n_label = int((y != IGNORE_INDEX).sum())
                    x, y = dist.shard(x), dist.shard(y)
                    with AUTOCAST[t.dtype](device):
                        # sum / global label count * world: DDP's gradient average is then the global mean
                        loss = masked_loss_sum(fwd, x, y) * dist.world_size / max(n_label, 1) / t.grad_accum
                    scaler.scale(loss).backward()
                    loss_sum += loss.item() / dist.world_size
                    step_tokens += x.numel()
                loss_sum = float(dist.sum(torch.tensor([loss_sum], dtype=torch.float64))[0])
                if not math.isfinite(loss_sum):
                    last = latest_checkpoint(run_dir)
                    kept = (
                        f"the last good checkpoint is {last.path}"
                        if last
                        else "no checkpoint was written yet"
                    )
                    raise NonFiniteLoss(f"loss is {loss_sum} at step {step}; stopped without saving ({kept})")
                if t.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable.values(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += step_tokens * dist.world_size
                run_tokens += step_tokens * dist.world_size
                if step % t.log_interval == 0 or step == t.max_iters:
                    tok_s = run_tokens / max(time.perf_counter() - wall0 - eval_s, 1e-9)
                    record("train", step, loss=loss_sum, lr=lr, tokens_per_s=tok_s, tokens=tokens_seen)
                    bar.update(task, info=f"loss {loss_sum:.4f} lr {lr:.2e} {tok_s:,.0f} tok/s")
                if step % t.eval_interval == 0 or step == t.max_iters:
                    t_eval = time.perf_counter()
                    last_eval = evaluate(module, splits, cfg, device)
                    eval_s += time.perf_counter() - t_eval
                    record("eval", step, **last_eval)
                if (step % cfg.checkpoint.interval == 0 or step == t.max_iters) and dist.is_main:
                    extra = {"tokens_seen": tokens_seen, "eval": last_eval, "method": cfg.base.method}
                    save_checkpoint(
                        run_dir,
                        step,
                        gpt,
                        optimizer,
                        batches.get_state(),
                        extra,
                        cfg.checkpoint.keep_last,
                        ckpt_weights(),
                        scaler,
                    )
                if step % cfg.checkpoint.interval == 0 or step == t.max_iters:
                    dist.barrier()  # no rank runs ahead of a checkpoint it may have to resume from
                if on_step is not None:
                    on_step(step)
                bar.update(task, completed=step)
        wall = time.perf_counter() - wall0

        # ---------------------------------------------------------------------------------- save
        summary: dict[str, Any] = {
            "step": step,
            "eval": last_eval,
            "trainable_params": n_trainable,
            "total_params": n_total,
            "tokens_per_s": run_tokens / (wall - eval_s) if wall > eval_s else 0.0,
            "wall_s": wall,
        }
        if dist.is_main:
            save_tokenizer(tok, run_dir / TOKENIZER_DIR)
            if lora_impl:
                lora_impl.save(module, run_dir / ADAPTER_DIR, settings, str(cfg.base.model))
                summary["adapter"] = str(run_dir / ADAPTER_DIR)
            if not lora_impl or cfg.lora.merge:
                merged = lora_impl.merged(module) if lora_impl else gpt
                save_model(merged, run_dir / FINAL_DIR)
                save_tokenizer(tok, run_dir / FINAL_DIR / TOKENIZER_DIR)
                summary["final"] = str(run_dir / FINAL_DIR)
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


def load_run_config(run_dir: str | Path) -> FinetuneConfig:
    """The config a fine-tuning run saved (for ``--resume`` without ``--config``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path}: not found; pass --config to resume a run that has no saved config")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return finetune_config_from_dict(raw)
