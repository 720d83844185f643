"""The recommender training config: YAML + ``key=value`` overrides, validated by the trainer's machinery.

What it does: ``RecConfig`` has the recommender's own sections (``data``, ``model``, ``loss``, ``train``) and
REUSES the trainer's ``optim``, ``schedule``, ``checkpoint`` and ``log`` sections unchanged; parsing and
type checks go through ``nanoforge.trainer.config`` (``apply_overrides``, section builder), so an unknown key
or a wrong type fails with the same one-line message as ``nanoforge train``. Shipped configs live in
``nanoforge/recommender/configs`` (``load_rec_config("sim-tiny")``).
What it does not do: read data or build models (``train``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nanoforge.recommender.model import SeqRecConfig
from nanoforge.trainer.config import (
    CheckpointConfig,
    LogConfig,
    OptimConfig,
    ScheduleConfig,
    apply_overrides,
    build_section,  # the trainer's typed section parser (same messages, no duplicate code)
)

SOURCES = ("simulator", "events", "movielens")
SOFTMAX = ("full", "sampled")


@dataclass(frozen=True)
class RecDataConfig:
    source: str = "simulator"  # simulator | events (CSV/JSONL/Parquet) | movielens (u.data, ratings.dat)
    path: str = ""  # file or directory for events / movielens
    protocol: str = "leave_last_out"  # leave_last_out | time_cutoff
    cutoff_fraction: float = 0.8  # time_cutoff: fraction of all events before the cut-off
    min_count: int = 1  # items seen fewer times in training go to hashed buckets
    n_buckets: int = 16  # hashed buckets for unseen / rare items
    horizon: int = 5  # conversion label: a purchase within this many next events
    sim_users: int = 300  # simulator: users
    sim_items: int = 120  # simulator: items
    sim_seed: int = 0  # simulator: seed


@dataclass(frozen=True)
class LossConfig:
    softmax: str = "full"  # full (all items) | sampled (uniform negatives shared by the batch)
    n_negatives: int = 256  # sampled softmax: negatives per batch
    w_item: float = 1.0  # weight of the next-item loss
    w_type: float = 0.5  # weight of the next-event-type loss (0 = off, e.g. MovieLens has one type)
    w_conv: float = 0.5  # weight of the conversion loss (0 = off, e.g. MovieLens has no purchases)


@dataclass(frozen=True)
class RecTrainConfig:
    seed: int = 1337  # seeds torch, numpy, python and the window sampler
    device: str = "cpu"  # cpu | cuda
    batch_size: int = 64  # windows per step
    max_iters: int = 500  # optimizer steps
    max_seconds: float | None = None  # stop early once this much training time (s) is spent; None = off
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    eval_interval: int = 100  # steps between validation evaluations (also at the end)
    eval_cases: int = 500  # validation cases per evaluation (first N; 0 = all)
    log_interval: int = 20  # steps between metric lines
    threads: int | None = None  # torch CPU threads; None = torch's default
    deterministic: bool = True  # torch.use_deterministic_algorithms (bitwise-repeatable on CPU)


@dataclass(frozen=True)
class RecConfig:
    data: RecDataConfig = field(default_factory=RecDataConfig)
    model: dict[str, Any] = field(default_factory=dict)  # SeqRecConfig fields except n_items
    loss: LossConfig = field(default_factory=LossConfig)
    train: RecTrainConfig = field(default_factory=RecTrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self, n_items: int) -> SeqRecConfig:
        if "n_items" in self.model:
            raise ValueError("model.n_items is set from the item vocabulary; remove it from the config")
        return SeqRecConfig.from_dict({"n_items": n_items, **self.model})


SECTIONS: dict[str, type] = {
    "data": RecDataConfig,
    "loss": LossConfig,
    "train": RecTrainConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "checkpoint": CheckpointConfig,
    "log": LogConfig,
}
CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": SOURCES,
    "data.protocol": ("leave_last_out", "time_cutoff"),
    "loss.softmax": SOFTMAX,
    "train.device": ("cpu", "cuda"),
    "schedule.name": ("cosine", "wsd", "constant"),
}


def shipped_configs() -> list[str]:
    root = resources.files("nanoforge.recommender") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def read_raw(name_or_path: str | Path) -> dict[str, Any]:
    """The raw YAML dict of a file path or a shipped config name."""
    p = Path(name_or_path)
    if p.is_file():
        text = p.read_text(encoding="utf-8")
    else:
        shipped = resources.files("nanoforge.recommender") / "configs" / f"{name_or_path!s}.yaml"
        if not shipped.is_file():
            raise ValueError(
                f"config {str(name_or_path)!r} is neither a file nor a shipped config; "
                f"shipped: {', '.join(shipped_configs())}"
            )
        text = shipped.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{name_or_path}: invalid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{name_or_path}: a config must be a mapping of sections")
    return raw


def load_rec_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> RecConfig:
    """Read a config (file, shipped name or defaults), apply ``section.key=value`` overrides, validate."""
    raw = read_raw(name_or_path) if name_or_path is not None else {}
    return rec_config_from_dict(apply_overrides(raw, overrides or []))


def rec_config_from_dict(raw: dict[str, Any]) -> RecConfig:
    """Validate a nested dict into a ``RecConfig`` (unknown keys, wrong types and bad choices are errors)."""
    unknown = sorted(set(raw) - {"model", *SECTIONS})
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; accepted: model, {', '.join(SECTIONS)}")
    sections = {name: build_section(name, cls, raw.get(name) or {}) for name, cls in SECTIONS.items()}
    for key, accepted in CHOICES.items():
        sec, k = key.split(".")
        value = getattr(sections[sec], k)
        if value not in accepted:
            raise ValueError(f"{key}={value!r} is not supported; accepted: {', '.join(accepted)}")
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise ValueError(f"config section 'model' must be a mapping, got {type(model).__name__}")
    cfg = RecConfig(model=dict(model), **sections)
    cfg.model_config(n_items=32)  # validates the model section now (core-model checks sizes and kinds)
    t = cfg.train
    for key, value in {
        "train.batch_size": t.batch_size,
        "train.max_iters": t.max_iters,
        "train.eval_interval": t.eval_interval,
        "train.log_interval": t.log_interval,
        "loss.n_negatives": cfg.loss.n_negatives,
        "data.horizon": cfg.data.horizon,
        "data.min_count": cfg.data.min_count,
        "data.n_buckets": cfg.data.n_buckets,
        "checkpoint.interval": cfg.checkpoint.interval,
        "checkpoint.keep_last": cfg.checkpoint.keep_last,
        "optim.lr": cfg.optim.lr,
    }.items():
        if not value > 0:
            raise ValueError(f"{key}={value!r} must be > 0")
    if cfg.data.source != "simulator" and not cfg.data.path:
        raise ValueError(f"data.source={cfg.data.source!r} needs data.path (a file or directory)")
    if cfg.schedule.min_lr > cfg.optim.lr:
        raise ValueError(f"schedule.min_lr={cfg.schedule.min_lr} must not exceed optim.lr={cfg.optim.lr}")
    return cfg
