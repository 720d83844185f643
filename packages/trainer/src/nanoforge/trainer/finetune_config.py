"""The fine-tuning config (SFT and LoRA): the pretraining sections plus ``base``, ``data`` and ``lora``.

Same loading rules as ``config.py`` (YAML path or shipped name, dotted ``key=value`` overrides, every key
and type checked, errors naming the key and what is accepted); ``train``, ``optim``, ``schedule``,
``checkpoint`` and ``log`` are the very same dataclasses.

    base.model      directory of the model to start from: ours (``save_model``) or a HF Llama/GPT-2 dir
    base.method     full (every weight trains) | lora (adapters only)
    data.train      JSONL of chats / instruction records;  data.val: JSONL or null (split off data.train)
    lora.*          impl (peft | nanoforge), r, alpha, dropout, target_modules ("q_proj,v_proj"), merge,
                    trainable_tokens (special | none | "5,17": token rows that train with the adapter)

What it does not do: run anything (``finetune``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoforge.trainer.adapters import LORA_IMPLS, LoraSettings
from nanoforge.trainer.config import (
    CheckpointConfig,
    LogConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    build_section,
    check_sections,
    read_config_file,
)

METHODS = ("full", "lora")
CHOICES: dict[str, tuple[str, ...]] = {"base.method": METHODS, "lora.impl": tuple(LORA_IMPLS)}


@dataclass(frozen=True)
class BaseConfig:
    model: str = ""  # model directory to fine-tune (native nanoforge or HF Llama / Mistral / Qwen2 / GPT-2)
    method: str = "full"  # full | lora (set by `nanoforge train sft` / `nanoforge train lora`)


@dataclass(frozen=True)
class SFTDataConfig:
    train: str = ""  # JSONL: {"messages": [...]} or {"instruction", "input"?, "output"} per line
    val: str | None = None  # JSONL for validation; null = hash-split val_fraction of data.train
    val_fraction: float = 0.1  # share of conversations held out when data.val is null
    tokenizer: str | None = None  # tokenizer dir; null = <base.model>/tokenizer
    chat_template: str = "chatml"  # attached when the tokenizer has none (adds its special tokens)


@dataclass(frozen=True)
class LoraSection:
    impl: str = "peft"  # peft | nanoforge (our LoRALinear); both write PEFT-format adapters
    r: int = 8  # rank of the update
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA branch input
    target_modules: str = "q_proj,v_proj"  # comma-separated linear names (q/k/v/o_proj, gate/up/down_proj)
    merge: bool = False  # also write RUN/final: the base with the adapter merged in
    # Token rows (embedding + LM head) that train with the adapter: "special" = the tokenizer's special tokens
    # that occur in the rendered training chats (<|im_start|>, <|im_end|>, ...: untrained by pretraining on
    # raw text), "none", or comma-separated token ids ("5,17").
    trainable_tokens: str = "special"

    def token_ids(self, special_ids: Sequence[int] = ()) -> tuple[int, ...]:
        """``trainable_tokens`` as ids; ``special_ids`` is what "special" stands for.

        Raises:
            ValueError: neither special, none nor comma-separated non-negative ints (names the bad item).
        """
        spec = self.trainable_tokens.strip()
        if spec == "special":
            return tuple(sorted(set(special_ids)))
        if spec == "none":
            return ()
        ids = []
        for item in spec.split(","):
            if not item.strip().isdigit():
                raise ValueError(
                    f"lora.trainable_tokens={self.trainable_tokens!r}: {item.strip()!r} is not a token id; "
                    "accepted: special, none, or comma-separated ids such as 5,17"
                )
            ids.append(int(item))
        return tuple(ids)

    def settings(self, special_ids: Sequence[int] = ()) -> LoraSettings:
        """The adapter settings; ``special_ids``: the ids ``trainable_tokens=special`` selects."""
        targets = tuple(t.strip() for t in self.target_modules.split(",") if t.strip())
        return LoraSettings(self.r, self.alpha, self.dropout, targets, self.token_ids(special_ids))


@dataclass(frozen=True)
class FinetuneConfig:
    base: BaseConfig = field(default_factory=BaseConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(FinetuneConfig)}  # type: ignore[misc]


def finetune_config_from_dict(raw: dict[str, Any]) -> FinetuneConfig:
    """Validate a raw nested dict into a ``FinetuneConfig``.

    Raises:
        ValueError: unknown section/key, wrong type, bad choice or range (naming the key).
    """
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; accepted: {', '.join(SECTIONS)}")
    tokens = raw.get("lora", {}).get("trainable_tokens") if isinstance(raw.get("lora"), dict) else None
    if isinstance(tokens, int | list) and not isinstance(tokens, bool):  # `=5` and YAML [5, 17] read as ids
        ids = tokens if isinstance(tokens, list) else [tokens]
        raw = {**raw, "lora": {**raw["lora"], "trainable_tokens": ",".join(map(str, ids))}}
    cfg = FinetuneConfig(
        **{name: build_section(name, cls, raw.get(name) or {}) for name, cls in SECTIONS.items()}
    )
    for key, accepted in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in accepted:
            raise ValueError(f"{key}={value!r} is not supported; accepted: {', '.join(accepted)}")
    check_sections(cfg)
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={cfg.data.val_fraction} must be in [0, 1)")
    lo = cfg.lora
    if lo.r <= 0 or lo.alpha <= 0:
        raise ValueError(f"lora.r={lo.r} and lora.alpha={lo.alpha} must be > 0")
    if not 0.0 <= lo.dropout < 1.0:
        raise ValueError(f"lora.dropout={lo.dropout} must be in [0, 1)")
    if not lo.settings().target_modules:
        raise ValueError("lora.target_modules is empty; give comma-separated names such as q_proj,v_proj")
    lo.token_ids()  # format errors now, range errors once the model's vocab_size is known
    return cfg


def load_finetune_config(
    name_or_path: str | Path | None, overrides: list[str] | None = None, method: str | None = None
) -> FinetuneConfig:
    """Read a config (file, shipped name, or defaults when None), apply overrides (and ``base.method``)."""
    raw = read_config_file(name_or_path) if name_or_path is not None else {}
    extra = [f"base.method={method}"] if method else []
    return finetune_config_from_dict(apply_overrides(raw, [*(overrides or []), *extra]))
