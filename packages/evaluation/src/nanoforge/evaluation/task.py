"""Evaluation tasks: a YAML file naming a JSONL data file, a prompt template, targets, metrics and settings.

Example (every key but ``name``, ``data`` and ``template`` is optional)::

    name: arith                      # report title
    type: generate                   # generate | choice | perplexity (TASK_TYPES)
    data: arith.jsonl                # one JSON object per line; path relative to this YAML file
    id_field: id                     # record id column (default: the line number)
    template: "Q: {{ question }}\\nA:"  # Jinja; or template_file: prompt.j2
    target_field: answer             # the reference (label text for choice tasks)
    chat: false                      # send the prompt as one user chat message instead of raw text
    metrics: [exact_match, token_f1] # keys of nanoforge.evaluation.metrics.METRICS
    sampling: {max_new_tokens: 16, temperature: 0.0, seed: 0}
    fewshot: {k: 2, mode: similar, seed: 0, query_field: question, data: train.jsonl}
    cot: false                       # append the chain-of-thought instruction
    extract: {method: last_number}   # answer extraction (prompting.EXTRACTORS); regex takes pattern
    labels: [yes, no]                # choice tasks: the label set (or choices_field per record)
    normalize: none                  # choice tasks: none | per_token | per_byte
    json_schema: {type: object}      # json tasks: sent as response_format, checked by json_schema metric
    json_instruction: true           # append the schema to the prompt too

What it deliberately does not do: download datasets, or run anything (``harness.py`` runs tasks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nanoforge.evaluation.io import read_jsonl
from nanoforge.evaluation.metrics import get_metric
from nanoforge.evaluation.prompting import EXTRACTORS, NORMALIZERS, SELECTORS, FewShotConfig, PromptTemplate

TASK_TYPES = ("generate", "choice", "perplexity")
_DEFAULT_METRICS = {"generate": ["exact_match"], "choice": ["loglik_accuracy"], "perplexity": ["perplexity"]}
_KEYS = {
    "name", "type", "data", "id_field", "template", "template_file", "target_field", "chat", "metrics",
    "sampling", "fewshot", "cot", "extract", "labels", "choices_field", "normalize", "json_schema",
    "json_instruction", "description",
}  # fmt: skip
_SAMPLING_KEYS = {
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "seed",
    "stop",
    "repetition_penalty",
}


@dataclass
class Task:
    """A loaded task: its records, template and settings (see the module docstring for the YAML keys)."""

    name: str
    type: str
    records: list[dict[str, Any]]
    template: PromptTemplate
    target_field: str = "target"
    id_field: str | None = None
    chat: bool = False
    metrics: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    fewshot_pool: list[dict[str, Any]] = field(default_factory=list)
    cot: bool = False
    extract: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    labels: list[str] = field(default_factory=list)
    choices_field: str | None = None
    normalize: str = "none"
    json_schema: dict[str, Any] | None = None
    json_instruction: bool = True
    data_hash: str = ""

    def record_id(self, index: int, row: Mapping[str, Any]) -> str:
        """The id of record ``index``: its ``id_field`` value, else its 1-based line number."""
        return str(row[self.id_field]) if self.id_field else str(index + 1)


def _bad(path: Path, key: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"{path}: bad {key} {value!r}; accepted: {accepted}")


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_task(path: str | Path) -> Task:
    """Read and validate a task YAML and its data.

    Raises:
        ValueError: naming the file, the bad key or value and what is accepted.
        FileNotFoundError: when the YAML or a data file is missing.
    """
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a task file must be a YAML mapping, got {type(raw).__name__}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ValueError(f"{path}: unknown task keys {sorted(unknown)}; accepted: {', '.join(sorted(_KEYS))}")
    for key in ("name", "data"):
        if key not in raw:
            raise ValueError(f"{path}: missing required key {key!r}")
    kind = raw.get("type", "generate")
    if kind not in TASK_TYPES:
        raise _bad(path, "type", kind, ", ".join(TASK_TYPES))
    base = path.parent
    if "template_file" in raw:
        source = (base / raw["template_file"]).read_text(encoding="utf-8")
    elif "template" in raw:
        source = str(raw["template"])
    else:
        raise ValueError(f"{path}: missing required key 'template' (or 'template_file')")
    data_path = base / str(raw["data"])
    records = read_jsonl(data_path)
    if not records:
        raise ValueError(f"{data_path}: no records")

    metrics = list(raw.get("metrics") or _DEFAULT_METRICS[kind])
    for m in metrics:
        get_metric(m)  # raises on unknown names
    sampling = dict(raw.get("sampling") or {})
    if set(sampling) - _SAMPLING_KEYS:
        raise _bad(
            path, "sampling keys", sorted(set(sampling) - _SAMPLING_KEYS), ", ".join(sorted(_SAMPLING_KEYS))
        )
    sampling.setdefault("max_new_tokens", 32)

    fs_raw = dict(raw.get("fewshot") or {})
    fs_data = fs_raw.pop("data", None)
    try:
        fewshot = FewShotConfig(**fs_raw)
    except TypeError:
        raise _bad(path, "fewshot", fs_raw, "k, mode, seed, query_field, data") from None
    if fewshot.mode not in SELECTORS:
        raise _bad(path, "fewshot.mode", fewshot.mode, ", ".join(sorted(SELECTORS)))
    pool = read_jsonl(base / fs_data) if fs_data else records

    extract = dict(raw.get("extract") or {"method": "none"})
    if extract.get("method", "none") not in EXTRACTORS:
        raise _bad(path, "extract.method", extract.get("method"), ", ".join(sorted(EXTRACTORS)))
    normalize = str(raw.get("normalize", "none"))
    if normalize not in NORMALIZERS:
        raise _bad(path, "normalize", normalize, ", ".join(sorted(NORMALIZERS)))
    labels = [str(x) for x in raw.get("labels") or []]
    choices_field = raw.get("choices_field")
    if kind == "choice" and not labels and not choices_field:
        raise ValueError(f"{path}: a choice task needs 'labels' or 'choices_field'")
    schema = raw.get("json_schema")
    if schema is not None and not isinstance(schema, dict):
        raise _bad(path, "json_schema", schema, "a JSON Schema mapping")
    if "json_schema" in metrics and schema is None:
        raise ValueError(f"{path}: metric 'json_schema' needs the task key 'json_schema'")

    return Task(
        name=str(raw["name"]),
        type=kind,
        records=records,
        template=PromptTemplate(source, name=str(raw["name"])),
        target_field=str(raw.get("target_field", "target")),
        id_field=raw.get("id_field"),
        chat=bool(raw.get("chat", False)),
        metrics=metrics,
        sampling=sampling,
        fewshot=fewshot,
        fewshot_pool=pool,
        cot=bool(raw.get("cot", False)),
        extract=extract,
        labels=labels,
        choices_field=choices_field,
        normalize=normalize,
        json_schema=schema,
        json_instruction=bool(raw.get("json_instruction", True)),
        data_hash=_file_hash(data_path),
    )
