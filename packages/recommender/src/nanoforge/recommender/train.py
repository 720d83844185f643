"""The recommender training recipe, top to bottom: data, split, vocab, model, optimizer, loop, checkpoints.

What it does: ``prepare`` loads events (``DATA_SOURCES``), splits them (``splits.PROTOCOLS``) and builds
the vocabulary from the training split only; ``train`` runs the loop with the trainer's pieces: AdamW with
decay on 2-D weights (``trainer.optim.build_adamw``), the lr schedules (``trainer.optim.SCHEDULES``),
atomic checkpoints with exact resume (``trainer.checkpoint``: the window sampler's generator state is the
data state) and the JSONL metrics log (``trainer.metrics.MetricsLog``). At the end the model is exported to
``RUN/model/`` (``save_rec_model``: safetensors + JSON config + vocab), which ``load_rec_model`` reads.
What it does not do: distributed training or mixed precision (the models are small).

Run directory::

    config.yaml  vocab.json  metrics.jsonl  checkpoints/step-NNNNNNNN/  model/{rec_model.json, model.safetensors, vocab.json}
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nanoforge.core_model.checkpoint import atomic_write_bytes, atomic_write_json, load_weights
from nanoforge.recommender.config import RecConfig, RecDataConfig
from nanoforge.recommender.dataset import TrainData
from nanoforge.recommender.evaluate import ModelScorer, evaluate_ranking
from nanoforge.recommender.events import Event, read_events, sequences
from nanoforge.recommender.model import LOSSES, SeqRec, SeqRecConfig
from nanoforge.recommender.movielens import load_movielens
from nanoforge.recommender.simulator import SimConfig, simulate
from nanoforge.recommender.splits import Split, leave_last_out, quantile_cutoff, time_cutoff
from nanoforge.recommender.vocab import ItemVocab
from nanoforge.trainer.checkpoint import latest_checkpoint, load_checkpoint, remove_partial, save_checkpoint
from nanoforge.trainer.metrics import MetricsLog
from nanoforge.trainer.optim import SCHEDULES, ScheduleArgs, build_adamw

MODEL_FORMAT = "nanoforge-rec-model"
MODEL_VERSION = 1

#: data.source -> loader of the raw events.
DATA_SOURCES: dict[str, Callable[[RecDataConfig], list[Event]]] = {
    "simulator": lambda d: simulate(SimConfig(n_users=d.sim_users, n_items=d.sim_items, seed=d.sim_seed))[0],
    "events": lambda d: read_events(d.path),
    "movielens": lambda d: load_movielens(d.path),
}


@dataclass
class Prepared:
    split: Split
    vocab: ItemVocab


def prepare(data: RecDataConfig) -> Prepared:
    """Load, split (no leakage: the vocab sees training events only) and build the vocabulary."""
    seqs = sequences(DATA_SOURCES[data.source](data))
    if data.protocol == "leave_last_out":
        split = leave_last_out(seqs)
    else:
        split = time_cutoff(seqs, quantile_cutoff(seqs, data.cutoff_fraction))
    vocab = ItemVocab.build(split.train_events(), min_count=data.min_count, n_buckets=data.n_buckets)
    return Prepared(split, vocab)


def compute_loss(
    model: SeqRec, batch: dict[str, torch.Tensor], cfg: RecConfig, gen: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the next-item, next-type and conversion losses over positions with a target."""
    h = model(batch["items"], batch["types"], batch["gaps"])  # (B, T, C)
    m = batch["next_item"] > 0
    hm = h[m]  # (N, C)
    parts: dict[str, torch.Tensor] = {}
    lc = cfg.loss
    parts["item"] = LOSSES[lc.softmax](model, hm, batch["next_item"][m], lc.n_negatives, gen)
    if lc.w_type > 0:
        parts["type"] = F.cross_entropy(model.type_logits(hm), batch["next_type"][m])
    cm = batch["conv"] >= 0
    if lc.w_conv > 0 and bool(cm.any()):
        parts["conv"] = F.binary_cross_entropy_with_logits(
            model.conversion_logit(h[cm]), batch["conv"][cm].float()
        )
    weights = {"item": lc.w_item, "type": lc.w_type, "conv": lc.w_conv}
    total = sum(weights[k] * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}  # type: ignore[return-value]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    cfg: RecConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    on_eval: Callable[[int, float, SeqRec, ItemVocab], None] | None = None,
    prepared: Prepared | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run; returns the final validation metrics and timings.

    ``on_eval(step, train_seconds, model, vocab)`` is called at every evaluation (experiments use it to
    measure quality against training time; its own time is not counted as training time).
    ``on_step(step, loss)`` is called after every optimizer step (progress bars).

    Raises:
        ValueError: a run directory with checkpoints but ``resume=False``; a checkpoint of another config.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    t, dev = cfg.train, torch.device(cfg.train.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.use_deterministic_algorithms(t.deterministic)
    _seed_all(t.seed)
    prep = prepared or prepare(cfg.data)
    vocab = prep.vocab
    data = TrainData(
        prep.split.train, vocab, max_len=int(cfg.model.get("max_len", 50)), horizon=cfg.data.horizon
    )
    model = SeqRec(cfg.model_config(vocab.size)).to(dev)
    o = cfg.optim
    opt = build_adamw(
        model,
        lr=o.lr,
        weight_decay=o.weight_decay,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        impl=o.impl,
        device=dev,
    )
    gen = torch.Generator().manual_seed(t.seed)
    step, elapsed = 0, 0.0
    remove_partial(run)
    ckpt = latest_checkpoint(run)
    if ckpt is not None and not resume:
        raise ValueError(f"{run} already has checkpoint {ckpt.path.name}; pass --resume or use a new run dir")
    if resume and ckpt is not None:
        if ckpt.meta.get("rec_config") != model.rec.to_dict():
            raise ValueError(
                f"{ckpt.path}: checkpoint of another recommender model config; use a new run dir"
            )
        gen.set_state(load_checkpoint(ckpt, model, opt))  # type: ignore[arg-type]
        step, elapsed = ckpt.step, float(ckpt.meta.get("train_seconds", 0.0))
    atomic_write_bytes(run / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    vocab.save(run / "vocab.json")
    log = MetricsLog(run, tensorboard=cfg.log.tensorboard, resume_step=step if resume else None)
    s = cfg.schedule
    sargs = ScheduleArgs(
        o.lr, s.min_lr, s.warmup_iters, s.decay_iters or t.max_iters, t.max_iters, s.decay_frac
    )
    valid = prep.split.valid[: t.eval_cases] if t.eval_cases else prep.split.valid
    result: dict[str, Any] = {"n_train_events": data.n_events, "n_items": vocab.size}
    try:
        while step < t.max_iters:
            t0 = time.perf_counter()
            model.train()
            lr = SCHEDULES[s.name](step, sargs)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = {k: v.to(dev) for k, v in data.sample(t.batch_size, gen).items()}
            loss, parts = compute_loss(model, batch, cfg, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            step += 1
            elapsed += time.perf_counter() - t0
            if on_step is not None:
                on_step(step, float(loss.detach()))
            if step % t.log_interval == 0 or step == t.max_iters:
                log.write("train", step, loss=float(loss.detach()), lr=lr, train_seconds=elapsed, **parts)
            out_of_time = t.max_seconds is not None and elapsed >= t.max_seconds
            last = step == t.max_iters or out_of_time
            if (step % t.eval_interval == 0 or last) and valid:
                res = evaluate_ranking(ModelScorer(model, vocab), valid, vocab)
                log.write(
                    "valid", step, train_seconds=elapsed, **{f"full_{k}": v for k, v in res["full"].items()}
                )
                result["valid"] = res
                if on_eval is not None:
                    on_eval(step, elapsed, model, vocab)
            if step % cfg.checkpoint.interval == 0 or last:
                extra = {"rec_config": model.rec.to_dict(), "train_seconds": elapsed}
                save_checkpoint(run, step, model, opt, gen.get_state(), extra, cfg.checkpoint.keep_last)  # type: ignore[arg-type]
            if out_of_time:
                break
    finally:
        log.close()
    save_rec_model(model, vocab, run / "model", horizon=cfg.data.horizon)
    result.update(step=step, train_seconds=elapsed)
    return result


# ------------------------------------------------------------------------------------------ model dir


def save_rec_model(
    model: SeqRec, vocab: ItemVocab, directory: str | Path, *, horizon: int | None = None
) -> Path:
    """Write ``rec_model.json`` (format, version, SeqRecConfig, conversion horizon), weights and vocab.

    ``horizon`` is the number of events the conversion head was trained to look ahead (``data.horizon``);
    ``load_rec_horizon`` reads it back (servers need it to say what the head predicts).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / "model.safetensors", st_save(sd))
    vocab.save(out / "vocab.json")
    atomic_write_json(
        out / "rec_model.json",
        {"format": MODEL_FORMAT, "version": MODEL_VERSION, "config": model.rec.to_dict(), "horizon": horizon},
    )
    return out


def load_rec_horizon(directory: str | Path) -> int | None:
    """The conversion horizon (events) of a model dir or run dir; None when it was not recorded."""
    d = Path(directory)
    if (d / "model" / "rec_model.json").is_file():
        d = d / "model"
    try:
        horizon = json.loads((d / "rec_model.json").read_text()).get("horizon")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{d / 'rec_model.json'}: cannot read a recommender model config ({e})") from e
    return int(horizon) if isinstance(horizon, int) and horizon > 0 else None


def load_rec_model(directory: str | Path) -> tuple[SeqRec, ItemVocab]:
    """Load a model dir (or a run dir holding ``model/``) in eval mode.

    Raises:
        ValueError: missing files, wrong format / version, weights that do not fit the config.
    """
    d = Path(directory)
    if (d / "model" / "rec_model.json").is_file():
        d = d / "model"
    meta_path = d / "rec_model.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: cannot read a recommender model config ({e})") from e
    if meta.get("format") != MODEL_FORMAT or meta.get("version") != MODEL_VERSION:
        raise ValueError(f"{meta_path}: not a {MODEL_FORMAT!r} v{MODEL_VERSION} model")
    model = SeqRec(SeqRecConfig.from_dict(meta["config"]))
    try:
        tensors = st_load((d / "model.safetensors").read_bytes())
    except (OSError, SafetensorError) as e:
        raise ValueError(f"{d / 'model.safetensors'}: cannot read weights ({e})") from e
    load_weights(model, tensors, str(d / "model.safetensors"))  # type: ignore[arg-type]
    vocab = ItemVocab.load(d / "vocab.json")
    if vocab.size != model.rec.n_items:
        raise ValueError(f"{d}: vocab has {vocab.size} ids but the model {model.rec.n_items}")
    return model.eval(), vocab
