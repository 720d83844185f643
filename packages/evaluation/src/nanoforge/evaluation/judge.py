"""LLM-as-judge: rubric scores and pairwise preferences whose verdicts are schema-constrained JSON.

A **rubric judge** rates one output on each criterion with an integer score (1-5 by default) and a short
reason; a **pairwise judge** says which of two outputs is better (``A``, ``B`` or ``tie``) and why. The
verdict's JSON Schema is sent as ``response_format`` (our InferenceService and OpenAI's ``json_schema``
response format decode under it, so the text cannot be invalid JSON); every verdict is still parsed and
validated here, which is all the Anthropic backend gets (its Messages API has no response format): an
invalid verdict is re-asked (sampling at T=0.7) up to ``retries`` times, then recorded invalid, never guessed.

The token budget of a verdict comes from the schema: reasons have a ``maxLength`` and scores are bounded,
so the longest compact verdict has a known length in characters, and a token is at least one character.
A constrained server therefore always finishes the JSON before ``max_new_tokens``.

Pairwise position bias: each pair is judged twice, (x, y) and (y, x). When the two verdicts name different
winners (after un-swapping), the pair counts as position-inconsistent and is resolved to a tie;
``position_bias_rate`` is the share of such pairs.

Judge-vs-human agreement lives in ``human.judge_human_agreement`` (Cohen's kappa, Spearman).

    >>> rubric_schema(Rubric((Criterion("helpful", "answers the question"),), reason_max_chars=8))["required"]
    ['helpful']
    >>> unswap("A")
    'B'

What it deliberately does not do: reference-free calibration of judges, multi-judge ensembles, or
chain-of-thought outside the verdict's ``reason`` field.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

from nanoforge.evaluation.metrics import INVALID_JSON, parse_json_output
from nanoforge.evaluation.prompting import PromptTemplate, response_format_for
from nanoforge.evaluation.stats import bootstrap_ci

VERDICTS = ("A", "B", "tie")
JUDGE_MODES = ("rubric", "pairwise")


@dataclass(frozen=True)
class Criterion:
    """One rubric line: a short name (the JSON key) and what the judge should look for."""

    name: str
    description: str


@dataclass(frozen=True)
class Rubric:
    """Criteria and the score range; ``reason_max_chars`` bounds each reason (and so the token budget)."""

    criteria: tuple[Criterion, ...]
    low: int = 1
    high: int = 5
    reason_max_chars: int = 120


DEFAULT_RUBRIC = Rubric(
    (
        Criterion("correctness", "the response is factually right and agrees with the reference if given"),
        Criterion("helpfulness", "the response answers what was asked, clearly and without padding"),
    )
)

RUBRIC_TEMPLATE = PromptTemplate(
    "You are an impartial judge. Rate the RESPONSE to the TASK on each criterion with an integer from "
    "{{ low }} (worst) to {{ high }} (best) and a one-sentence reason.\nCriteria:\n"
    "{% for c in criteria %}- {{ c.name }}: {{ c.description }}\n{% endfor %}"
    "TASK:\n{{ prompt }}\n{% if reference %}REFERENCE ANSWER:\n{{ reference }}\n{% endif %}"
    "RESPONSE:\n{{ output }}\nVerdict as JSON:\n",
    name="rubric-judge",
)

PAIRWISE_TEMPLATE = PromptTemplate(
    "You are an impartial judge. Two assistants answered the same TASK. Decide which response is better "
    "(A or B), or tie if neither is. Do not let the order or the length of the responses sway you.\n"
    "TASK:\n{{ prompt }}\n{% if reference %}REFERENCE ANSWER:\n{{ reference }}\n{% endif %}"
    "RESPONSE A:\n{{ output_a }}\nRESPONSE B:\n{{ output_b }}\nVerdict as JSON:\n",
    name="pairwise-judge",
)


def _reason_schema(max_chars: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_chars}


def rubric_schema(rubric: Rubric) -> dict[str, Any]:
    """``{criterion: {"reason": str, "score": int in [low, high]}}`` with every criterion required."""
    per = {
        "type": "object",
        "properties": {
            "reason": _reason_schema(rubric.reason_max_chars),
            "score": {"type": "integer", "minimum": rubric.low, "maximum": rubric.high},
        },
        "required": ["reason", "score"],
        "additionalProperties": False,
    }
    names = [c.name for c in rubric.criteria]
    return {
        "type": "object",
        "properties": {n: per for n in names},
        "required": names,
        "additionalProperties": False,
    }


def pairwise_schema(reason_max_chars: int = 120) -> dict[str, Any]:
    """``{"reason": str, "verdict": "A" | "B" | "tie"}`` (the reason first, so it is written before the call)."""
    return {
        "type": "object",
        "properties": {"reason": _reason_schema(reason_max_chars), "verdict": {"enum": list(VERDICTS)}},
        "required": ["reason", "verdict"],
        "additionalProperties": False,
    }


def _longest_instance(schema: Mapping[str, Any]) -> Any:
    """The longest compact JSON value our judge schemas allow (each string char escaped to two chars)."""
    if "enum" in schema:
        return max(schema["enum"], key=lambda v: len(json.dumps(v)))
    kind = schema.get("type")
    if kind == "object":
        return {k: _longest_instance(v) for k, v in schema["properties"].items()}
    if kind == "integer":
        return max((schema["minimum"], schema["maximum"]), key=lambda v: len(str(v)))
    if kind == "string":
        return "\n" * schema["maxLength"]
    raise ValueError(f"judge schemas use object / integer / string / enum, got {schema!r}")


def verdict_token_budget(schema: Mapping[str, Any]) -> int:
    """An upper bound on the tokens of a compact verdict: its longest length in characters, plus slack."""
    return len(json.dumps(_longest_instance(schema), separators=(",", ":"))) + 8


def unswap(verdict: str) -> str:
    """A verdict on the swapped order, expressed in the original order (``A`` <-> ``B``, tie stays)."""
    return {"A": "B", "B": "A", "tie": "tie"}[verdict]


@dataclass
class Verdict:
    """One judge call: the parsed JSON (None when still invalid after retries) and what it cost."""

    value: dict[str, Any] | None
    raw: str
    attempts: int
    error: str | None = None
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def valid(self) -> bool:
        return self.value is not None


@dataclass
class JudgeConfig:
    """How to judge (the task YAML's ``judge:`` section).

    Attributes:
        backend: ``KIND:TARGET`` of the judge model (``grpc:HOST:PORT``, ``openai:URL``, ``anthropic:URL``).
        mode: ``rubric`` or ``pairwise``.
        rubric: the criteria (rubric mode) and the reason length (both modes).
        model: model name sent to the judge backend.
        use_reference: show the task's target to the judge as a reference answer.
        retries: extra attempts when a verdict does not parse or validate.
        max_new_tokens: verdict budget; 0 derives it from the schema (:func:`verdict_token_budget`).
        concurrency: judge calls in flight.
        chat: send the judge prompt as one user chat message (instruction-tuned judges) instead of raw text.
    """

    backend: str
    mode: str = "rubric"
    rubric: Rubric = DEFAULT_RUBRIC
    model: str = ""
    use_reference: bool = True
    retries: int = 2
    max_new_tokens: int = 0
    concurrency: int = 4
    chat: bool = False


def parse_judge_config(raw: Mapping[str, Any], where: str = "judge") -> JudgeConfig:
    """Validate a ``judge:`` mapping.

    ``{backend: grpc:127.0.0.1:50051, mode: rubric, rubric: [{name: correct, description: ...}],
    scale: [1, 5], reason_max_chars: 120, use_reference: true, retries: 2, max_new_tokens: 0}``

    Raises:
        ValueError: naming the bad key or value and what is accepted.
    """
    keys = {"backend", "mode", "rubric", "scale", "reason_max_chars", "model", "use_reference", "retries",
            "max_new_tokens", "concurrency", "chat"}  # fmt: skip
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping, got {type(raw).__name__}")
    if set(raw) - keys:
        raise ValueError(
            f"{where}: unknown keys {sorted(set(raw) - keys)}; accepted: {', '.join(sorted(keys))}"
        )
    if not isinstance(raw.get("backend"), str) or ":" not in raw["backend"]:
        raise ValueError(f"{where}.backend: expected KIND:TARGET, got {raw.get('backend')!r}")
    mode = raw.get("mode", "rubric")
    if mode not in JUDGE_MODES:
        raise ValueError(f"{where}.mode: bad value {mode!r}; accepted: {', '.join(JUDGE_MODES)}")
    crit = DEFAULT_RUBRIC.criteria
    if "rubric" in raw:
        items = raw["rubric"]
        if not isinstance(items, list) or not items:
            raise ValueError(
                f"{where}.rubric: expected a non-empty list of {{name, description}}, got {items!r}"
            )
        try:
            crit = tuple(Criterion(str(c["name"]), str(c.get("description", ""))) for c in items)
        except (TypeError, KeyError):
            raise ValueError(f"{where}.rubric: every item needs a 'name', got {items!r}") from None
        if len({c.name for c in crit}) != len(crit):
            raise ValueError(f"{where}.rubric: criterion names must be unique, got {[c.name for c in crit]}")
    low, high = raw.get("scale", [1, 5])
    if not (isinstance(low, int) and isinstance(high, int) and low < high):
        raise ValueError(
            f"{where}.scale: expected [low, high] integers with low < high, got {raw['scale']!r}"
        )
    reason = int(raw.get("reason_max_chars", 120))
    if not 1 <= reason <= 2000:
        raise ValueError(f"{where}.reason_max_chars: expected 1..2000, got {reason}")
    return JudgeConfig(
        backend=raw["backend"],
        mode=mode,
        rubric=Rubric(crit, low, high, reason),
        model=str(raw.get("model", "")),
        use_reference=bool(raw.get("use_reference", True)),
        retries=int(raw.get("retries", 2)),
        max_new_tokens=int(raw.get("max_new_tokens", 0)),
        concurrency=int(raw.get("concurrency", 4)),
        chat=bool(raw.get("chat", False)),
    )


class Judge:
    """Asks a backend (see ``backends.py``) for schema-constrained verdicts.

    Args:
        backend: a started backend (``await backend.start()`` first).
        config: the judge settings.
    """

    def __init__(self, backend: Any, config: JudgeConfig) -> None:
        self.backend, self.config = backend, config
        self.sem = asyncio.Semaphore(max(1, config.concurrency))

    async def _ask(self, prompt: str, schema: Mapping[str, Any]) -> Verdict:
        budget = self.config.max_new_tokens or verdict_token_budget(schema)
        fmt = response_format_for(schema)
        raw, error, total_latency, pt, ct = "", None, 0.0, 0, 0
        for attempt in range(1, self.config.retries + 2):
            # Greedy first; a re-ask samples (T=0.7), since greedy would repeat the same invalid text.
            params = {"max_new_tokens": budget, "temperature": 0.0 if attempt == 1 else 0.7}
            async with self.sem:
                try:
                    reply = await self.backend.generate(
                        prompt, params, chat=self.config.chat, response_format=fmt
                    )
                except Exception as exc:
                    if not self.backend.is_transient(exc) or attempt > self.config.retries:
                        return Verdict(
                            None, raw, attempt, f"{type(exc).__name__}: {exc}", total_latency, pt, ct
                        )
                    await asyncio.sleep(0.2 * 2 ** (attempt - 1))
                    continue
            raw, total_latency = reply.text, total_latency + reply.latency_ms
            pt, ct = pt + reply.prompt_tokens, ct + reply.completion_tokens
            value = parse_json_output(raw)
            if value is INVALID_JSON:
                error = f"invalid verdict: not JSON ({raw[:80]!r})"
                continue
            try:
                jsonschema.validate(value, schema)
            except jsonschema.ValidationError as exc:
                error = f"invalid verdict: {exc.message[:200]}"
                continue
            return Verdict(value, raw, attempt, None, total_latency, pt, ct)
        return Verdict(None, raw, self.config.retries + 1, error, total_latency, pt, ct)

    async def rate(self, prompt: str, output: str, reference: str | None = None) -> Verdict:
        """Rubric verdict on one output: ``{criterion: {"reason", "score"}}``."""
        r = self.config.rubric
        text = RUBRIC_TEMPLATE.render(
            criteria=r.criteria, low=r.low, high=r.high, prompt=prompt, output=output,
            reference=reference if self.config.use_reference else None,
        )  # fmt: skip
        return await self._ask(text, rubric_schema(r))

    async def compare(
        self, prompt: str, output_x: str, output_y: str, reference: str | None = None
    ) -> dict[str, Any]:
        """Judge (x, y) and (y, x); returns both verdicts, the winner (``x``/``y``/``tie``) and consistency."""
        ref = reference if self.config.use_reference else None
        schema = pairwise_schema(self.config.rubric.reason_max_chars)
        first, second = await asyncio.gather(
            self._ask(PAIRWISE_TEMPLATE.render(prompt=prompt, output_a=output_x, output_b=output_y, reference=ref),
                      schema),
            self._ask(PAIRWISE_TEMPLATE.render(prompt=prompt, output_a=output_y, output_b=output_x, reference=ref),
                      schema),
        )  # fmt: skip
        return resolve_pair(first, second)


def resolve_pair(first: Verdict, second: Verdict) -> dict[str, Any]:
    """Combine the verdicts on (x, y) and on (y, x): inconsistent winners become a tie.

    Returns:
        ``{"valid", "winner": "x" | "y" | "tie" | None, "consistent", "verdicts": [v1, v2], "errors"}``.
    """
    out: dict[str, Any] = {
        "verdicts": [first.value, second.value],
        "errors": [v.error for v in (first, second) if v.error],
        "valid": first.valid and second.valid,
        "winner": None,
        "consistent": None,
    }
    if not out["valid"]:
        return out
    v1 = first.value["verdict"]  # type: ignore[index]
    v2 = unswap(second.value["verdict"])  # type: ignore[index]
    names = {"A": "x", "B": "y", "tie": "tie"}
    out["consistent"] = v1 == v2
    out["winner"] = names[v1] if v1 == v2 else "tie"
    return out


def overall_score(value: Mapping[str, Any]) -> float:
    """Mean score over the criteria of a rubric verdict."""
    return sum(float(v["score"]) for v in value.values()) / len(value)


def summarise_rubric(
    verdicts: Mapping[str, Verdict], rubric: Rubric, *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per-criterion and overall mean scores with bootstrap intervals; invalid verdicts counted, not scored."""
    ok = {rid: v.value for rid, v in verdicts.items() if v.value is not None}

    def ci(values: list[float]) -> dict[str, Any]:
        return bootstrap_ci(values, lambda s: sum(s) / len(s) if s else math.nan, n_resamples=n_resamples,
                            seed=seed).to_dict()  # fmt: skip

    return {
        "n": len(verdicts),
        "n_valid": len(ok),
        "n_invalid": len(verdicts) - len(ok),
        "validity_rate": len(ok) / len(verdicts) if verdicts else None,
        "criteria": {c.name: ci([float(v[c.name]["score"]) for v in ok.values()]) for c in rubric.criteria},
        "overall": ci([overall_score(v) for v in ok.values()]),
        "records": {
            rid: {"scores": v.value, "error": v.error, "attempts": v.attempts} for rid, v in verdicts.items()
        },
    }


def summarise_pairs(results: Mapping[str, Mapping[str, Any]], name_x: str, name_y: str) -> dict[str, Any]:
    """Win rates of x and y over valid pairs, ties, and the position-bias rate."""
    valid = {i: r for i, r in results.items() if r["valid"]}
    n = len(valid)
    wins = Counter(r["winner"] for r in valid.values())
    inconsistent = sum(not r["consistent"] for r in valid.values())
    label = {"x": name_x, "y": name_y, "tie": "tie"}
    return {
        "a": name_x,
        "b": name_y,
        "n": len(results),
        "n_valid": n,
        "n_invalid": len(results) - n,
        "validity_rate": n / len(results) if results else None,
        "wins": {name_x: wins["x"] / n if n else None, name_y: wins["y"] / n if n else None},
        "ties": wins["tie"] / n if n else None,
        "position_inconsistent": inconsistent,
        "position_bias_rate": inconsistent / n if n else None,
        "records": {
            i: {**r, "winner": label.get(r["winner"]) if r["winner"] else None} for i, r in results.items()
        },
    }


async def run_judge(
    config: JudgeConfig,
    systems: Mapping[str, Sequence[Any]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge the successful records of every system (rubric) or of the first two systems (pairwise).

    Args:
        config: the judge settings; its backend is built, started and closed here.
        systems: system name -> harness ``Record`` list (``id``, ``prompt``, ``output``, ``target``, ``error``).

    Returns:
        The report's ``judge`` section: ``{"mode", "backend", "systems": {name: rubric summary}}`` or
        ``{"mode", "backend", "pairs": pairwise summary}``.

    Raises:
        ValueError: pairwise mode with fewer than two systems.
    """
    from nanoforge.evaluation.backends import build_backend

    backend = build_backend(config.backend, model=config.model)
    await backend.start()
    judge = Judge(backend, config)
    out: dict[str, Any] = {"mode": config.mode, "backend": config.backend, "model": backend.model}
    try:
        if config.mode == "rubric":
            out["rubric"] = [c.name for c in config.rubric.criteria]
            out["systems"] = {}
            for name, records in systems.items():
                ok = [r for r in records if r.error is None]
                verdicts = await asyncio.gather(*(judge.rate(r.prompt, r.output, r.target) for r in ok))
                out["systems"][name] = summarise_rubric(
                    {r.id: v for r, v in zip(ok, verdicts, strict=True)}, config.rubric,
                    n_resamples=n_resamples, seed=seed,
                )  # fmt: skip
            return out
        if len(systems) < 2:
            raise ValueError(f"a pairwise judge needs two systems (--backend twice), got {list(systems)}")
        (name_x, recs_x), (name_y, recs_y) = list(systems.items())[:2]
        by_id = {r.id: r for r in recs_y if r.error is None}
        shared = [(r, by_id[r.id]) for r in recs_x if r.error is None and r.id in by_id]
        results = await asyncio.gather(
            *(judge.compare(x.prompt, x.output, y.output, x.target) for x, y in shared)
        )
        out["pairs"] = summarise_pairs({x.id: res for (x, _), res in zip(shared, results, strict=True)},
                                       name_x, name_y)  # fmt: skip
        return out
    finally:
        await backend.aclose()
