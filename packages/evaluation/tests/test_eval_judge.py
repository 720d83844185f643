"""LLM-as-judge against a REAL ``nanoforge serve`` (tiny random model) on loopback: every verdict parses and
validates thanks to schema-constrained decoding; pairwise position swap; the Anthropic path (parse +
validate + re-ask, no response_format) against the loopback stub; judge-vs-human agreement; the CLI."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from nanoforge.evaluation.backends import build_backend
from nanoforge.evaluation.cli import group
from nanoforge.evaluation.human import judge_human_agreement, spearman
from nanoforge.evaluation.judge import (
    DEFAULT_RUBRIC,
    Criterion,
    Judge,
    JudgeConfig,
    Rubric,
    Verdict,
    pairwise_schema,
    parse_judge_config,
    resolve_pair,
    rubric_schema,
    summarise_pairs,
    verdict_token_budget,
)

OUTPUTS = [
    ("what is two plus two", "four", "four"),
    ("is the sky blue", "yes it is blue", "yes"),
    ("is fire cold", "fire is hot, so no", "no"),
    ("name a fast animal", "the quick brown fox", "the quick brown fox"),
    ("what is two plus two", "five", "four"),
    ("is the sky blue", "", "yes"),
    ("say something", '{"name": "fox", "legs": 4}', "ok"),
    ("is fire cold", "The quick brown fox jumps over the lazy dog. " * 4, "no"),
]


def _with_backend(spec: str, fn: Any) -> Any:
    async def go() -> Any:
        backend = build_backend(spec)
        await backend.start()
        try:
            return await fn(backend)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_budget_bounds_the_longest_valid_verdict() -> None:
    rubric = Rubric((Criterion("a", ""), Criterion("bb", "")), low=1, high=10, reason_max_chars=5)
    schema = rubric_schema(rubric)
    longest = {"a": {"reason": "\n" * 5, "score": 10}, "bb": {"reason": "\n" * 5, "score": 10}}
    jsonschema.validate(longest, schema)
    assert verdict_token_budget(schema) >= len(json.dumps(longest, separators=(",", ":")))
    assert verdict_token_budget(pairwise_schema(5)) == len('{"reason":"\\n\\n\\n\\n\\n","verdict":"tie"}') + 8


@pytest.mark.parametrize("kind", ["grpc", "grpc-chat", "openai"])
def test_rubric_verdicts_from_a_random_model_all_parse_and_validate(server: Any, kind: str) -> None:
    spec = f"openai:{server.http_base}/v1" if kind == "openai" else f"grpc:{server.grpc_target}"
    config = JudgeConfig(
        backend=spec,
        rubric=Rubric(DEFAULT_RUBRIC.criteria, reason_max_chars=40),
        retries=0,
        chat=kind == "grpc-chat",
    )

    async def rate_all(backend: Any) -> list[Verdict]:
        judge = Judge(backend, config)
        return list(await asyncio.gather(*(judge.rate(p, o, t) for p, o, t in OUTPUTS)))

    verdicts = _with_backend(spec, rate_all)
    schema = rubric_schema(config.rubric)
    assert len(verdicts) == len(OUTPUTS)
    for v in verdicts:
        # retries=0: the first answer of an untrained model must already be valid JSON that fits the schema.
        assert v.valid, (v.error, v.raw)
        assert v.attempts == 1 and v.completion_tokens > 0
        jsonschema.validate(json.loads(v.raw), schema)
        assert set(v.value) == {"correctness", "helpfulness"}  # type: ignore[arg-type]
        assert all(1 <= c["score"] <= 5 for c in v.value.values())  # type: ignore[union-attr]


def test_pairwise_judges_both_orders_and_counts_position_bias(server: Any) -> None:
    spec = f"grpc:{server.grpc_target}"
    config = JudgeConfig(
        backend=spec, mode="pairwise", rubric=Rubric(DEFAULT_RUBRIC.criteria, reason_max_chars=30)
    )

    async def compare_all(backend: Any) -> list[dict[str, Any]]:
        judge = Judge(backend, config)
        return list(await asyncio.gather(*(judge.compare(p, o, t, t) for p, o, t in OUTPUTS)))

    results = _with_backend(spec, compare_all)
    for r in results:
        assert r["valid"], r["errors"]
        v1, v2 = r["verdicts"]
        jsonschema.validate(v1, pairwise_schema(30))
        jsonschema.validate(v2, pairwise_schema(30))
        swapped = {"A": "B", "B": "A", "tie": "tie"}[v2["verdict"]]
        assert r["consistent"] == (v1["verdict"] == swapped)
        assert r["winner"] == (
            {"A": "x", "B": "y", "tie": "tie"}[v1["verdict"]] if r["consistent"] else "tie"
        )
    summary = summarise_pairs(dict(enumerate(results)), "ours", "theirs")
    inconsistent = sum(not r["consistent"] for r in results)
    assert summary["position_inconsistent"] == inconsistent
    assert summary["position_bias_rate"] == pytest.approx(inconsistent / len(results))
    shares = [summary["wins"]["ours"], summary["wins"]["theirs"], summary["ties"]]
    assert sum(shares) == pytest.approx(1.0)


def test_resolve_pair_turns_inconsistent_verdicts_into_ties() -> None:
    def v(verdict: str) -> Verdict:
        return Verdict({"reason": "", "verdict": verdict}, "", 1)

    # (x, y) says A (x wins); (y, x) says A (y wins): a position bias -> tie.
    biased = resolve_pair(v("A"), v("A"))
    assert biased["consistent"] is False and biased["winner"] == "tie"
    agree = resolve_pair(v("B"), v("A"))  # y wins in both orders
    assert agree["consistent"] is True and agree["winner"] == "y"
    broken = resolve_pair(v("A"), Verdict(None, "not json", 3, "invalid verdict: x"))
    assert (
        broken["valid"] is False and broken["winner"] is None and broken["errors"] == ["invalid verdict: x"]
    )


def test_anthropic_judge_has_no_response_format_so_invalid_verdicts_are_reasked_then_counted(
    anthropic_stub: Any,
) -> None:
    spec = f"anthropic:{anthropic_stub.base_url}"
    config = JudgeConfig(backend=spec, retries=2)
    verdict = _with_backend(spec, lambda b: Judge(b, config).rate("unique judge prompt", "an answer"))
    # The stub answers "stub: <last word>", which is not JSON: asked 3 times, then recorded invalid.
    assert not verdict.valid and verdict.attempts == 3
    assert verdict.error is not None and verdict.error.startswith("invalid verdict")
    assert verdict.raw == "stub: JSON:"
    assert sum(n for p, n in anthropic_stub.calls.items() if "unique judge prompt" in p) == 3


def test_parse_judge_config_errors_name_the_problem() -> None:
    cfg = parse_judge_config(
        {"backend": "grpc:h:1", "rubric": [{"name": "a"}, {"name": "b"}], "scale": [0, 3]}
    )
    assert [c.name for c in cfg.rubric.criteria] == ["a", "b"] and (cfg.rubric.low, cfg.rubric.high) == (0, 3)
    with pytest.raises(ValueError, match=r"judge.mode: bad value 'best'; accepted: rubric, pairwise"):
        parse_judge_config({"backend": "grpc:h:1", "mode": "best"})
    with pytest.raises(ValueError, match="unknown keys \\['temp'\\]"):
        parse_judge_config({"backend": "grpc:h:1", "temp": 1})
    with pytest.raises(ValueError, match="criterion names must be unique"):
        parse_judge_config({"backend": "grpc:h:1", "rubric": [{"name": "a"}, {"name": "a"}]})


def test_spearman_and_agreement_with_humans() -> None:
    assert spearman([1, 2, 2, 3], [1, 3, 3, 4]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    scores = {"1": 5, "2": 4, "3": 2, "4": 1}
    judge = {
        "mode": "rubric",
        "systems": {
            "ours": {"records": {i: {"scores": {"c": {"reason": "", "score": s}}} for i, s in scores.items()}}
        },
    }
    human = {
        "kind": "single",
        "by_item": {"1": {"r1": "5"}, "2": {"r1": "3"}, "3": {"r1": "2"}, "4": {"r1": "1"}},
    }
    agree = judge_human_agreement(judge, human, "ours")
    # labels 5,4,2,1 vs 5,3,2,1: p_o = 3/4, p_e = 3/16 (labels 5, 2, 1 once each side) -> 9/13; ranks equal.
    assert agree["n"] == 4 and agree["cohen_kappa"] == pytest.approx((0.75 - 3 / 16) / (1 - 3 / 16))
    assert agree["spearman"] == pytest.approx(1.0)
    pairs = {
        "mode": "pairwise",
        "pairs": {"records": {"1": {"winner": "a"}, "2": {"winner": "b"}, "3": {"winner": "tie"}}},
    }
    human_pairs = {
        "kind": "pairs",
        "by_item": {"1": {"r1": "a"}, "2": {"r1": "b", "r2": "a"}, "3": {"r1": "tie"}},
    }
    # item 2: raters split -> tie; judge says b. Agreement 2/3.
    assert judge_human_agreement(pairs, human_pairs, "a")["cohen_kappa"] == pytest.approx(
        (2 / 3 - (1 * 1 + 0 * 1 + 1 * 2) / 9) / (1 - 3 / 9)
    )
    with pytest.raises(ValueError, match="cannot compare a pairwise judge with single"):
        judge_human_agreement(pairs, human, "a")


def test_cli_runs_the_tasks_judge_and_folds_human_agreement(
    server: Any, write_task: Any, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i}", "question": q, "answer": a} for i, (q, _, a) in enumerate(OUTPUTS[:5])]
    judge = {"backend": f"grpc:{server.grpc_target}", "mode": "rubric", "reason_max_chars": 24,
             "rubric": [{"name": "correct", "description": "agrees with the reference"}]}  # fmt: skip
    task = write_task(rows, id_field="id", template="Q: {{ question }}? A:", target_field="answer",
                      metrics=["token_f1"], sampling={"max_new_tokens": 4, "temperature": 0.0}, judge=judge)  # fmt: skip
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(group, ["run", str(task), "--backend", f"ours=grpc:{server.grpc_target}",
                                "--out", str(out), "--resamples", "50"], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    section = report["judge"]["systems"]["ours"]
    assert section["n"] == 5 and section["n_valid"] == 5 and section["validity_rate"] == 1.0
    assert 1 <= section["overall"]["value"] <= 5
    assert report["manifest"]["judge"]["mode"] == "rubric"
    assert "## LLM judge" in (out / "report.md").read_text()
    assert "LLM judge" in (out / "report.html").read_text()

    # Humans rate the same records; the judge's overall scores are compared with theirs.
    res = runner.invoke(group, ["export-human", str(out / "report.json"), "--out", str(tmp_path / "h.csv")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "h.csv", newline="") as fh:
        rows_h = list(csv.DictReader(fh))
    judged = {rid: r["scores"]["correct"]["score"] for rid, r in section["records"].items()}
    for row in rows_h:
        row["rating"] = str(judged[row["item_id"]])  # a human who agrees with the judge everywhere
    with open(tmp_path / "h.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows_h[0]))
        writer.writeheader()
        writer.writerows(rows_h)
    res = runner.invoke(
        group, ["import-human", str(tmp_path / "h.csv"), "--report", str(out / "report.json")]
    )
    assert res.exit_code == 0, res.output
    agree = json.loads((out / "report.json").read_text())["human"]["h"]["judge_agreement"]
    assert agree["n"] == 5 and agree["cohen_kappa"] == pytest.approx(1.0)
    assert "judge vs human round **h** (5 items)" in (out / "report.md").read_text()
