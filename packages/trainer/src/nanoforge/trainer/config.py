"""The pretraining config: typed sections, YAML files (shipped ones by name), ``key=value`` overrides.

What it does: defines one frozen dataclass per section (``data``, ``model``, ``train``, ``optim``,
``schedule``, ``checkpoint``, ``log``), loads a YAML file or a shipped config by name
(``load_config("shakespeare-char")``), applies dotted overrides (``model.n_layer=2``), and checks every key
and type: an unknown key or a wrong type is a ``ValueError`` naming the key and what is accepted.
The ``model`` section is a ``ModelConfig`` dict (validated by core-model), except that ``vocab_size`` may be
``null``: the recipe then takes it from the tokenizer of the data.
What it does not do: run anything (see ``pretrain``) or read the data.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nanoforge.core_model.config import ModelConfig

#: Accepted values of the string knobs that are choices (the rest are free strings such as paths).
CHOICES: dict[str, tuple[Any, ...]] = {
    "train.device": ("auto", "cpu", "cuda"),
    "train.dtype": ("float32", "bfloat16", "float16", "auto"),
    "optim.impl": ("auto", "fused", "foreach", "for-loop"),
    "schedule.name": ("cosine", "wsd", "constant"),  # the keys of schedules.SCHEDULES (a test checks)
}


@dataclass(frozen=True)
class DataConfig:
    dir: str = ""  # a directory written by `nanoforge train prepare` (train.bin, val.bin, manifest.json)
    tokenizer: str | None = None  # tokenizer dir to check against the data; None = the copy in data.dir


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1337  # seeds torch, numpy, python and the data sampler
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    dtype: str = "float32"  # float32 | bfloat16 (autocast) | float16 (+ grad scaler) | auto (bf16 on CUDA)
    fp16_init_scale: float = 65536.0  # float16: the grad scaler's first loss scale (backs off on overflow)
    compile: bool = False  # torch.compile the model (minutes of warm-up; pays off on long GPU runs)
    batch_size: int = 12  # sequences per micro-batch
    block_size: int = 64  # tokens per sequence (<= model.max_seq_len)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_iters: int = 2000  # optimizer steps
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    eval_interval: int = 250  # steps between evaluations (also at step 0 and at the end)
    eval_iters: int = 20  # batches per evaluation
    log_interval: int = 10  # steps between metric lines
    threads: int | None = None  # torch CPU threads; None = torch's default
    deterministic: bool = True  # torch.use_deterministic_algorithms (bitwise-repeatable on CPU)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.1  # AdamW decay, applied to 2-D weights only (not norms/biases)
    beta1: float = 0.9  # Adam first-moment decay
    beta2: float = 0.99  # Adam second-moment decay (0.95 for big models, 0.99 for tiny ones)
    eps: float = 1e-8  # Adam epsilon
    impl: str = "auto"  # auto (fused when torch has it for the device) | fused | foreach | for-loop


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    warmup_iters: int = 100  # linear warmup steps
    decay_iters: int | None = None  # cosine: step where lr reaches min_lr; None = train.max_iters
    decay_frac: float = 0.2  # wsd: final fraction of the run spent decaying to min_lr
    min_lr: float = 1e-4  # floor of the schedule (usually lr / 10)


@dataclass(frozen=True)
class CheckpointConfig:
    interval: int = 250  # steps between checkpoints (one is always written at the end)
    keep_last: int = 3  # checkpoints kept; older ones are deleted


@dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = True  # write TensorBoard events when the `tensorboard` package is installed
    peak_flops: float | None = None  # for MFU; None = per-device default (pretrain.PEAK_FLOPS)
    progress: bool = True  # rich progress bar on stderr (only drawn on a terminal)


@dataclass(frozen=True)
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields; vocab_size may be null
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-able) of every section."""
        return dataclasses.asdict(self)

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The ``ModelConfig``; ``vocab_size`` fills a null ``model.vocab_size``."""
        data = dict(self.model)
        if data.get("vocab_size") is None:
            if vocab_size is None:
                raise ValueError("model.vocab_size is null and no tokenizer vocab size was given")
            data["vocab_size"] = vocab_size
        try:
            return ModelConfig.from_dict(data)
        except TypeError as e:
            raise ValueError(f"model: {e}") from e


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "train": TrainConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "checkpoint": CheckpointConfig,
    "log": LogConfig,
}


# ------------------------------------------------------------------------------------------- loading
def shipped_configs() -> list[str]:
    """Names of the YAML configs shipped with the package (``--config NAME``)."""
    root = resources.files("nanoforge.trainer") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def read_config_file(name_or_path: str | Path) -> dict[str, Any]:
    """The raw dict of a YAML config: a file path, or the name of a shipped config.

    Raises:
        ValueError: neither an existing file nor a shipped name; invalid YAML; not a mapping.
    """
    path = Path(name_or_path)
    if path.is_file():
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        name = str(name_or_path).removesuffix(".yaml")
        shipped = resources.files("nanoforge.trainer") / "configs" / f"{name}.yaml"
        if "/" in name or not shipped.is_file():
            raise ValueError(
                f"config {str(name_or_path)!r} is neither a file nor a shipped config; shipped: {', '.join(shipped_configs())}"
            )
        text, source = shipped.read_text(encoding="utf-8"), f"shipped config {name!r}"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: invalid YAML ({e})") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a config must be a YAML mapping of sections, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"model.n_layer=2"`` -> ``(["model", "n_layer"], 2)``; the value is parsed as YAML (``1e-3``, ``null``).

    Raises:
        ValueError: no ``=`` or an empty key.
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} must look like section.key=value (e.g. model.n_layer=2)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" (no dot) as a string; a number is meant
        with contextlib.suppress(ValueError):
            parsed = float(parsed)
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each dotted ``key=value`` set (sections are created when missing)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a config (file, shipped name, or defaults when None), apply overrides, validate.

    Raises:
        ValueError: unknown section/key, wrong type, bad choice (naming the key and what is accepted).
    """
    raw = read_config_file(name_or_path) if name_or_path is not None else {}
    return config_from_dict(apply_overrides(raw, overrides or []))


def config_from_dict(raw: dict[str, Any]) -> PretrainConfig:
    """Validate a raw nested dict into a ``PretrainConfig``."""
    accepted = ["model", *SECTIONS]
    unknown = sorted(set(raw) - set(accepted))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; accepted: {', '.join(accepted)}")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        sections[name] = _build_section(name, cls, raw.get(name) or {})
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise ValueError(f"config section 'model' must be a mapping, got {type(model).__name__}")
    cfg = PretrainConfig(model=dict(model), **sections)
    check_sections(cfg)
    max_len = cfg.model.get("max_seq_len")
    if isinstance(max_len, int) and cfg.train.block_size > max_len:
        raise ValueError(f"train.block_size={cfg.train.block_size} exceeds model.max_seq_len={max_len}")
    cfg.model_config(vocab_size=cfg.model.get("vocab_size") or 256)  # validate the model section now
    return cfg


def _build_section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"config section {name!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"unknown key(s) {[f'{name}.{k}' for k in unknown]}; accepted in {name!r}: {', '.join(known)}"
        )
    checked = {}
    for key, value in values.items():
        checked[key] = _check_type(f"{name}.{key}", value, hints[key])
        choices = CHOICES.get(f"{name}.{key}")
        if choices is not None and checked[key] not in choices:
            raise ValueError(
                f"{name}.{key}={value!r} is not supported; accepted: {', '.join(map(str, choices))}"
            )
    return cls(**checked)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise naming the key and type."""
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None and optional:
        return None
    if base is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = (
        (base is bool and isinstance(value, bool))
        or (base is int and isinstance(value, int) and not isinstance(value, bool))
        or (base is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (base is str and isinstance(value, str))
    )
    if not ok:
        expected = f"{base.__name__}{' or null' if optional else ''}"
        raise ValueError(f"{key}={value!r} has type {type(value).__name__}; expected {expected}")
    return float(value) if base is float else value


def build_section(name: str, cls: type, values: Any) -> Any:
    """Validate one section's mapping into its dataclass (public for the fine-tuning config)."""
    return _build_section(name, cls, values)


def check_sections(cfg: Any) -> None:
    """Range checks of the shared sections (train, optim, schedule, checkpoint, log) of any recipe config."""
    t, o, s, c = cfg.train, cfg.optim, cfg.schedule, cfg.checkpoint
    positive = {
        "train.batch_size": t.batch_size,
        "train.block_size": t.block_size,
        "train.grad_accum": t.grad_accum,
        "train.max_iters": t.max_iters,
        "train.eval_interval": t.eval_interval,
        "train.eval_iters": t.eval_iters,
        "train.log_interval": t.log_interval,
        "checkpoint.interval": c.interval,
        "checkpoint.keep_last": c.keep_last,
        "optim.lr": o.lr,
        "optim.eps": o.eps,
        "train.fp16_init_scale": t.fp16_init_scale,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ValueError(f"{key}={value!r} must be > 0")
    non_negative = {
        "train.grad_clip": t.grad_clip,
        "optim.weight_decay": o.weight_decay,
        "schedule.warmup_iters": s.warmup_iters,
        "schedule.min_lr": s.min_lr,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ValueError(f"{key}={value!r} must be >= 0")
    for key, value in {"optim.beta1": o.beta1, "optim.beta2": o.beta2}.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{key}={value!r} must be in [0, 1)")
    if not 0.0 <= s.decay_frac <= 1.0:
        raise ValueError(f"schedule.decay_frac={s.decay_frac!r} must be in [0, 1]")
    if s.decay_iters is not None and s.decay_iters <= s.warmup_iters:
        raise ValueError(
            f"schedule.decay_iters={s.decay_iters} must exceed schedule.warmup_iters={s.warmup_iters}"
        )
    if s.min_lr > o.lr:
        raise ValueError(f"schedule.min_lr={s.min_lr} must not exceed optim.lr={o.lr}")
    if t.threads is not None and t.threads <= 0:
        raise ValueError(f"train.threads={t.threads} must be a positive int or null")
    if cfg.log.peak_flops is not None and not cfg.log.peak_flops > 0:
        raise ValueError(f"log.peak_flops={cfg.log.peak_flops} must be > 0 or null")
