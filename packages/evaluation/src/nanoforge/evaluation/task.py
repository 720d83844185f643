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
    contexts_field: contexts         # generate tasks: texts the answer must be grounded on (groundedness)
    service: {collection: docs, mode: hybrid, top_k: 10, k: 5}   # retrieval / rag / ranking tasks
    relevant_field: relevant         # retrieval (and optional rag): relevant doc ids, list or {id: grade}
    history_field: history           # ranking: the user's past item ids (or {item_id, event_type}); the
    user_field: user_id              #   held-out next item is target_field
    judge:                           # LLM-as-judge after generation (judge.parse_judge_config)
      backend: grpc:127.0.0.1:50051  # the judge model (grpc | openai | anthropic | local spec)
      mode: rubric                   # rubric (1-5 + reason per criterion) | pairwise (first two systems)
      rubric: [{name: correct, description: agrees with the reference}]

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
from nanoforge.evaluation.judge import JudgeConfig, parse_judge_config
from nanoforge.evaluation.metrics import get_metric
from nanoforge.evaluation.prompting import EXTRACTORS, NORMALIZERS, SELECTORS, FewShotConfig, PromptTemplate
from nanoforge.evaluation.services import SEARCH_MODES

TASK_TYPES = ("generate", "choice", "perplexity", "retrieval", "rag", "ranking")
_DEFAULT_METRICS = {
    "generate": ["exact_match"],
    "choice": ["loglik_accuracy"],
    "perplexity": ["perplexity"],
    "retrieval": ["recall_at_k", "mrr", "ndcg_at_k"],
    "rag": ["groundedness", "faithfulness", "abstention_rate"],
    "ranking": ["hit_rate_at_k", "ndcg_at_k", "mrr"],
}
_SERVICE_KEYS = {"collection", "mode", "top_k", "k", "exclude_seen", "options", "grounding_threshold"}
_KEYS = {
    "name", "type", "data", "id_field", "template", "template_file", "target_field", "chat", "metrics",
    "sampling", "fewshot", "cot", "extract", "labels", "choices_field", "normalize", "json_schema",
    "json_instruction", "description", "judge", "contexts_field", "service", "relevant_field", "history_field",
    "user_field",
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
    judge: JudgeConfig | None = None
    contexts_field: str | None = None
    service: dict[str, Any] = field(default_factory=dict)
    relevant_field: str = "relevant"
    history_field: str = "history"
    user_field: str = "user_id"

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

    service = dict(raw.get("service") or {})
    if set(service) - _SERVICE_KEYS:
        raise _bad(
            path, "service keys", sorted(set(service) - _SERVICE_KEYS), ", ".join(sorted(_SERVICE_KEYS))
        )
    if kind in ("retrieval", "rag") and "collection" not in service:
        raise ValueError(f"{path}: a {kind} task needs service.collection (the indexed collection to query)")
    for key in ("top_k", "k"):
        if key in service and (not isinstance(service[key], int) or service[key] < 1):
            raise _bad(path, f"service.{key}", service[key], "an integer >= 1")
    if "mode" in service and service["mode"] not in SEARCH_MODES:
        raise _bad(path, "service.mode", service["mode"], ", ".join(SEARCH_MODES))
    if raw.get("contexts_field") and raw["contexts_field"] not in records[0]:
        raise ValueError(
            f"{path}: contexts_field {raw['contexts_field']!r} is not in the first record: {sorted(records[0])}"
        )
    field_keys = {"retrieval": "relevant_field", "ranking": "history_field"}
    if kind in field_keys:
        column = str(raw.get(field_keys[kind], field_keys[kind].removesuffix("_field")))
        if column not in records[0]:
            raise ValueError(
                f"{path}: a {kind} task reads {column!r} from each record; first record: {sorted(records[0])}"
            )

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
        contexts_field=raw.get("contexts_field"),
        service=service,
        relevant_field=str(raw.get("relevant_field", "relevant")),
        history_field=str(raw.get("history_field", "history")),
        user_field=str(raw.get("user_field", "user_id")),
        judge=parse_judge_config(raw["judge"], f"{path}: judge") if raw.get("judge") is not None else None,
    )
