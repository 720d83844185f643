"""The harness: run a task against one or more backends and build the report dict.

For each backend ("system") every record is prepared (few-shot examples, template, chain-of-thought,
JSON instruction), sent under an ``asyncio.Semaphore`` (``concurrency`` in flight), retried with
exponential backoff and jitter on the backend's transient errors, and read from / written to the SQLite
response cache. A record that still fails keeps its error string; the run goes on. Per-record latency,
tokens and cost are kept; the metrics of the successful records get seeded bootstrap intervals.

Task types (registry :data:`RUNNERS`): ``generate`` (text out, optional answer extraction), ``choice``
(log-likelihood classifier over the Score RPC), ``perplexity`` (log-likelihood of the target), and the
service-backed ones (``services.py``): ``retrieval`` (Search -> ranked document ids vs the record's
relevant ids), ``rag`` (Ask -> answer, contexts, abstention), ``ranking`` (Recommend -> next items vs the
held-out one).

What it deliberately does not do: render reports (``report.py``) or parse the command line (``cli.py``).
"""

from __future__ import annotations

import asyncio
import math
import platform
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from nanoforge.evaluation.backends import Backend
from nanoforge.evaluation.cache import ResponseCache, cache_key
from nanoforge.evaluation.cost import DEFAULT_PRICES, Price
from nanoforge.evaluation.metrics import RecordView, get_metric
from nanoforge.evaluation.prompting import (
    LogLikelihoodClassifier,
    bag_of_words_embed,
    build_prompt,
    extract_answer,
    json_instruction,
    memoized,
    response_format_for,
    select_examples,
)
from nanoforge.evaluation.stats import bootstrap_ci
from nanoforge.evaluation.task import Task

REPORT_FORMAT = "nanoforge-eval-report"
REPORT_VERSION = 1


@dataclass
class RunOptions:
    """How a run behaves (not what it evaluates)."""

    concurrency: int = 4
    retries: int = 3
    backoff_s: float = 0.2
    seed: int = 0
    n_resamples: int = 1000
    confidence: float = 0.95
    limit: int | None = None
    prices: Mapping[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    #: embed function for ``fewshot.mode: similar`` (default: bag-of-words; see backends.grpc_embed_fn)
    embed: Callable[[Sequence[str]], Any] | None = None


@dataclass
class Record:
    """One evaluated item of one system (what the report's ``records`` list holds)."""

    id: str
    prompt: str
    target: str
    output: str = ""
    prediction: str = ""
    error: str | None = None
    attempts: int = 0
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    compute_ms: float | None = None
    cpu_seconds: float | None = None
    cost_usd: float = 0.0
    choice_index: int | None = None
    target_index: int | None = None
    choice_scores: list[float] | None = None
    logprob: float | None = None
    num_tokens: int = 0
    num_bytes: int = 0
    retrieved: list[str] | None = None
    relevant: dict[str, float] | None = None
    contexts: list[str] | None = None
    abstained: bool | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def describe_error(exc: BaseException) -> str:
    """``"UNAVAILABLE: connection refused"`` for gRPC errors, ``"TypeName: message"`` otherwise."""
    code = getattr(exc, "code", None)
    if callable(code) and hasattr(exc, "details"):
        return f"{code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


class _Caller:
    """Retry + cache around one backend's calls."""

    def __init__(self, backend: Backend, cache: ResponseCache | None, opts: RunOptions) -> None:
        self.backend, self.cache, self.opts = backend, cache, opts
        self.rng = random.Random(opts.seed)

    async def call(
        self, op: str, prompt: Any, params: Any, fn: Callable[[], Awaitable[Any]], rec: Record
    ) -> Any:
        key = cache_key(self.backend.kind, self.backend.target, self.backend.model, op, prompt, params)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            rec.cached = True
            return hit
        for attempt in range(self.opts.retries + 1):
            rec.attempts = attempt + 1
            try:
                value = asdict(await fn())
                break
            except Exception as exc:
                if attempt == self.opts.retries or not self.backend.is_transient(exc):
                    raise
                delay = self.opts.backoff_s * 2**attempt * (0.5 + self.rng.random())
                await asyncio.sleep(delay)
        if self.cache is not None:
            self.cache.put(key, value)
        return value


def _fill_usage(rec: Record, reply: Mapping[str, Any]) -> None:
    rec.prompt_tokens = int(reply.get("prompt_tokens", 0))
    rec.completion_tokens = int(reply.get("completion_tokens", 0))
    rec.ttft_ms = reply.get("ttft_ms")
    rec.latency_ms = float(reply.get("latency_ms", 0.0))
    rec.compute_ms = reply.get("compute_ms")
    rec.notes.update(reply.get("notes") or {})
    if reply.get("model"):
        rec.notes["model"] = reply["model"]


async def _run_generate(task: Task, row: Mapping[str, Any], rec: Record, caller: _Caller) -> None:
    fmt = response_format_for(task.json_schema) if task.json_schema is not None else None
    params = dict(task.sampling)
    b = caller.backend

    async def attempt(response_format: Mapping[str, Any] | None) -> dict[str, Any]:
        args = {"params": params, "chat": task.chat, "response_format": response_format}
        return await caller.call(
            "generate",
            rec.prompt,
            args,
            lambda: b.generate(rec.prompt, params, chat=task.chat, response_format=response_format),
            rec,
        )

    try:
        reply = await attempt(fmt)
    except Exception as exc:
        if fmt is None or not b.format_unsupported(exc):
            raise
        # The server refused schema-constrained decoding: record it, fall back to the prompt instruction only.
        rec.notes["response_format"] = f"unsupported ({describe_error(exc)}); retried without it"
        reply = await attempt(None)
    _fill_usage(rec, reply)
    rec.output = reply["text"]
    options = {k: v for k, v in task.extract.items() if k != "method"}
    if task.extract.get("method") == "label":
        options.setdefault("labels", task.labels)
    rec.prediction = extract_answer(rec.output, task.extract.get("method", "none"), **options)


def _labels_of(task: Task, row: Mapping[str, Any]) -> list[str]:
    if task.choices_field:
        return [str(c) for c in row[task.choices_field]]
    return task.labels


async def _run_choice(task: Task, row: Mapping[str, Any], rec: Record, caller: _Caller) -> None:
    labels = _labels_of(task, row)
    target = row[task.target_field]
    rec.target_index = int(target) if isinstance(target, int) else labels.index(str(target))
    rec.target = labels[rec.target_index]
    totals: dict[str, Any] = {}

    async def score(context: str, conts: Sequence[str]) -> list[tuple[float, int]]:
        b = caller.backend
        reply = await caller.call("score", context, list(conts), lambda: b.score(context, conts), rec)
        totals.update(reply)
        return [(float(lp), int(n)) for lp, n in reply["scores"]]

    clf = LogLikelihoodClassifier(task.template, labels, score, normalize=task.normalize)
    result = await clf.classify_context(rec.prompt)
    _fill_usage(rec, totals)
    rec.choice_index, rec.choice_scores = result.index, result.scores
    rec.output = rec.prediction = result.label


async def _run_perplexity(task: Task, row: Mapping[str, Any], rec: Record, caller: _Caller) -> None:
    b = caller.backend
    reply = await caller.call(
        "score", rec.prompt, [rec.target], lambda: b.score(rec.prompt, [rec.target]), rec
    )
    _fill_usage(rec, reply)
    lp, n = reply["scores"][0]
    rec.logprob, rec.num_tokens, rec.num_bytes = float(lp), int(n), len(rec.target.encode("utf-8"))


_SERVICE_OF = {"search": "retriever", "ask": "retriever", "recommend": "recommender"}


def _service(backend: Backend, method: str, task: Task) -> Any:
    if not hasattr(backend, method):
        spec = f"{_SERVICE_OF[method]}:HOST:PORT"
        raise ValueError(f"a {task.type} task needs a backend with {method}() ({spec}), got {backend.kind}")
    return backend


def relevance(value: Any) -> dict[str, float]:
    """A record's relevant ids: ``["d1", "d2"]`` (grade 1 each), ``{"d1": 2, "d2": 1}``, or one id.

    Raises:
        ValueError: for anything else.
    """
    if isinstance(value, str | int):
        return {str(value): 1.0}
    if isinstance(value, list):
        return {str(d): 1.0 for d in value}
    if isinstance(value, Mapping):
        return {str(d): float(g) for d, g in value.items()}
    raise ValueError(f"bad relevant ids {value!r}; accepted: an id, a list of ids, or {{id: grade}}")


async def _run_retrieval(task: Task, row: Mapping[str, Any], rec: Record, caller: _Caller) -> None:
    b = _service(caller.backend, "search", task)
    svc = task.service
    args = {
        "collection": svc["collection"],
        "mode": svc.get("mode", "hybrid"),
        "top_k": int(svc.get("top_k", 10)),
    }
    reply = await caller.call(
        "search", rec.prompt, args, lambda: b.search(args["collection"], rec.prompt, mode=args["mode"],
                                                      top_k=args["top_k"]), rec
    )  # fmt: skip
    _fill_usage(rec, reply)
    rec.retrieved = list(reply["document_ids"])
    rec.relevant = relevance(row[task.relevant_field])
    rec.output = rec.prediction = " ".join(rec.retrieved)
    rec.target = " ".join(rec.relevant)


async def _run_rag(task: Task, row: Mapping[str, Any], rec: Record, caller: _Caller) -> None:
    b = _service(caller.backend, "ask", task)
    svc = task.service
    args = {
        "collection": svc["collection"], "mode": svc.get("mode", "hybrid"), "top_k": int(svc.get("top_k", 5)),
        "params": dict(task.sampling), "options": dict(svc.get("options") or {}),
    }  # fmt: skip
    reply = await caller.call(
        "ask", rec.prompt, args, lambda: b.ask(args["collection"], rec.prompt, mode=args["mode"],
                                               top_k=args["top_k"], params=args["params"],
                                               options=args["options"]), rec
    )  # fmt: skip
    _fill_usage(rec, reply)
    rec.output = rec.prediction = reply["text"]
    rec.contexts, rec.abstained = list(reply["contexts"]), bool(reply["abstained"])
    rec.retrieved = list(reply["cited_document_ids"])
    if task.relevant_field in row:
        rec.relevant = relevance(row[task.relevant_field])
    if reply.get("server_groundedness") is not None:
        rec.notes["server_groundedness"] = reply["server_groundedness"]


async def _run_ranking(task: Task, row: Mapping[str, Any], rec: Record, caller: _Caller) -> None:
    b = _service(caller.backend, "recommend", task)
    svc = task.service
    user = str(row.get(task.user_field, rec.id))
    history = list(row[task.history_field])
    args = {"user": user, "history": history, "top_k": int(svc.get("top_k", 10)),
            "exclude_seen": bool(svc.get("exclude_seen", False))}  # fmt: skip
    reply = await caller.call(
        "recommend", user, args, lambda: b.recommend(user, history, top_k=args["top_k"],
                                                     exclude_seen=args["exclude_seen"]), rec
    )  # fmt: skip
    _fill_usage(rec, reply)
    rec.retrieved = list(reply["item_ids"])
    rec.relevant = relevance(row[task.target_field])
    rec.output = rec.prediction = " ".join(rec.retrieved)


RUNNERS: dict[str, Callable[[Task, Mapping[str, Any], Record, _Caller], Awaitable[None]]] = {
    "generate": _run_generate,
    "choice": _run_choice,
    "perplexity": _run_perplexity,
    "retrieval": _run_retrieval,
    "rag": _run_rag,
    "ranking": _run_ranking,
}


def prepare(
    task: Task, embed: Callable[[Sequence[str]], Any] | None = None
) -> list[tuple[dict[str, Any], Record]]:
    """Render every record's prompt (few-shot, CoT, JSON instruction); returns (row, Record) pairs."""
    out = []
    embed = memoized(embed or bag_of_words_embed)
    for i, row in enumerate(task.records):
        examples = select_examples(row, task.fewshot_pool, task.fewshot, embed) if task.fewshot.k else []
        prompt = build_prompt(task.template, row, examples, target_field=task.target_field, cot=task.cot)
        if task.json_schema is not None and task.json_instruction:
            prompt = f"{prompt}\n{json_instruction(task.json_schema)}\n"
        rec = Record(id=task.record_id(i, row), prompt=prompt, target=str(row.get(task.target_field, "")))
        if task.contexts_field:
            rec.contexts = [str(c) for c in row[task.contexts_field]]
        out.append((dict(row), rec))
    return out


def record_view(rec: Mapping[str, Any], extra: Mapping[str, Any]) -> RecordView:
    """The metric view of one record dict (as stored in a report)."""
    return RecordView(
        prediction=rec["prediction"],
        target=rec["target"],
        raw_output=rec["output"],
        choice_index=rec["choice_index"],
        target_index=rec["target_index"],
        logprob=rec["logprob"],
        num_tokens=rec["num_tokens"],
        num_bytes=rec["num_bytes"],
        extra=extra,
        retrieved=rec.get("retrieved"),
        relevant=rec.get("relevant"),
        contexts=rec.get("contexts"),
        abstained=rec.get("abstained"),
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile ``q`` in [0, 1] of ``values``; None for no values.

    >>> percentile([10.0, 20.0, 30.0, 40.0], 0.5)
    25.0
    """
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def metric_extra(task: Task) -> dict[str, Any]:
    """Task settings metrics read: the JSON schema, the cut-off ``k`` of ranking metrics."""
    extra: dict[str, Any] = {"k": int(task.service.get("k", task.service.get("top_k", 10)))}
    if task.json_schema is not None:
        extra["json_schema"] = task.json_schema
    if "grounding_threshold" in task.service:
        extra["grounding_threshold"] = float(task.service["grounding_threshold"])
    return extra


def summarise(task: Task, records: Sequence[Record], opts: RunOptions) -> dict[str, Any]:
    """Metric intervals, latency percentiles, token and cost totals of one system's records."""
    ok = [r for r in records if r.error is None]
    metrics: dict[str, Any] = {}
    extra = metric_extra(task)
    for name in task.metrics:
        metric = get_metric(name)
        stats = [metric.record(record_view(asdict(r), extra)) for r in ok]
        ci = bootstrap_ci(
            stats, metric.aggregate, confidence=opts.confidence, n_resamples=opts.n_resamples, seed=opts.seed
        )
        metrics[name] = {**ci.to_dict(), "higher_is_better": metric.higher_is_better}
    lat = [r.latency_ms for r in ok]
    ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    total_cost = sum(r.cost_usd for r in ok)
    return {
        "metrics": metrics,
        "n": len(records),
        "n_ok": len(ok),
        "n_failed": len(records) - len(ok),
        "cache_hits": sum(r.cached for r in records),
        "latency_ms": {
            "p50": percentile(lat, 0.5),
            "p95": percentile(lat, 0.95),
            "p99": percentile(lat, 0.99),
            "mean": statistics.fmean(lat) if lat else None,
        },
        "ttft_ms": {"p50": percentile(ttft, 0.5), "mean": statistics.fmean(ttft) if ttft else None},
        "tokens": {
            "prompt": sum(r.prompt_tokens for r in ok),
            "completion": sum(r.completion_tokens for r in ok),
        },
        "cost_usd": {"total": total_cost, "per_1k_records": 1000 * total_cost / len(ok) if ok else None},
    }


def _price_records(records: Sequence[Record], price: Price, measured_cpu_s: float | None) -> None:
    compute = [(r.compute_ms or 0.0) / 1000.0 for r in records]
    total = sum(compute)
    for rec, sec in zip(records, compute, strict=True):
        if rec.error is not None:
            continue
        # A measured run total (local child process) is shared out in proportion to each record's compute.
        rec.cpu_seconds = measured_cpu_s * sec / total if measured_cpu_s is not None and total > 0 else sec
        rec.cost_usd = price.record_cost(rec.prompt_tokens, rec.completion_tokens, rec.cpu_seconds)


async def run_system(
    task: Task,
    backend: Backend,
    *,
    cache: ResponseCache | None = None,
    opts: RunOptions | None = None,
    on_record: Callable[[Record], None] | None = None,
) -> list[Record]:
    """Evaluate every record of ``task`` on ``backend``; never raises for a per-record failure."""
    opts = opts or RunOptions()
    if opts.concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {opts.concurrency}")
    await backend.start()
    caller = _Caller(backend, cache, opts)
    items = prepare(task, opts.embed)[: opts.limit]
    sem = asyncio.Semaphore(opts.concurrency)
    runner = RUNNERS[task.type]
    cpu0 = backend.cpu_seconds()

    async def one(row: dict[str, Any], rec: Record) -> Record:
        async with sem:
            try:
                await runner(task, row, rec, caller)
            except Exception as exc:
                rec.error = describe_error(exc)
            if on_record is not None:
                on_record(rec)
            return rec

    records = list(await asyncio.gather(*(one(row, rec) for row, rec in items)))
    cpu1 = backend.cpu_seconds()
    measured = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    _price_records(records, opts.prices.get(backend.kind, Price()), measured)
    return records


def package_versions() -> dict[str, str]:
    """Installed versions of nanoforge packages and the libraries that shape results."""
    names = [
        "nanoforge-evaluation", "nanoforge-api", "nanoforge-tokenizer", "nanoforge-cli", "numpy", "sacrebleu",
        "jsonschema", "jinja2", "openai", "anthropic", "grpcio",
    ]  # fmt: skip
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def tokenizer_fingerprint(model_dir: str | Path) -> dict[str, Any] | None:
    """sha256 and vocabulary size of ``MODEL_DIR/tokenizer`` (None when the dir has no tokenizer)."""
    from nanoforge.tokenizer.io import load_tokenizer

    tok_dir = Path(model_dir) / "tokenizer"
    file = tok_dir / "tokenizer.json"
    if not file.is_file():
        return None
    import hashlib

    tok = load_tokenizer(tok_dir)
    return {"sha256": hashlib.sha256(file.read_bytes()).hexdigest()[:16], "vocab_size": int(tok.vocab_size)}


def build_report(
    task: Task,
    systems: Mapping[str, tuple[Backend, list[Record]]],
    opts: RunOptions,
    *,
    tokenizer: Mapping[str, Any] | None = None,
    judge: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report: task, manifest, per system its summary and records, and the judge section if any."""
    out_systems = {}
    for name, (backend, records) in systems.items():
        models = sorted({r.notes.get("model", "") for r in records} - {""})
        out_systems[name] = {
            "backend": backend.kind,
            "target": backend.target,
            "model": backend.model,
            "served_models": models,
            "price": asdict(opts.prices.get(backend.kind, Price())),
            **summarise(task, records, opts),
            "records": [asdict(r) for r in records],
        }
    manifest = {
        "created_unix": time.time(),
        "task": task.name,
        "task_type": task.type,
        "models": {name: s["served_models"] or [s["model"]] for name, s in out_systems.items()},
        "template_hash": task.template.hash,
        "data_hash": task.data_hash,
        "sampling": task.sampling,
        "fewshot": asdict(task.fewshot),
        "cot": task.cot,
        "extract": task.extract,
        "seeds": {"run": opts.seed, "fewshot": task.fewshot.seed, "sampling": task.sampling.get("seed")},
        "bootstrap": {"n_resamples": opts.n_resamples, "confidence": opts.confidence},
        "tokenizer": tokenizer,
        "python": platform.python_version(),
        "packages": package_versions(),
    }
    if judge is not None:
        manifest["judge"] = {k: judge.get(k) for k in ("mode", "backend", "model", "rubric")}
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "task": {
            "name": task.name,
            "type": task.type,
            "metrics": task.metrics,
            "n_records": len(task.records),
            "json_schema": task.json_schema,
            "metric_extra": metric_extra(task),
        },
        "manifest": manifest,
        "systems": out_systems,
    }
    if judge is not None:
        report["judge"] = dict(judge)
    return report
