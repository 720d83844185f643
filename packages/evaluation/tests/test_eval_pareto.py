"""The Pareto front on (cost low, latency low, quality high) and where reports show it."""

from __future__ import annotations

import random

from nanoforge.evaluation.report import pareto_front, render_html, render_summary


def _dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    return a[0] <= b[0] and a[1] <= b[1] and a[2] >= b[2] and a != b


def test_pareto_front_by_hand() -> None:
    pts = [(1.0, 10.0, 0.5), (2.0, 5.0, 0.5), (2.0, 10.0, 0.4), (3.0, 3.0, 0.9), (1.0, 10.0, 0.5)]
    # (2, 10, .4) is dominated by (1, 10, .5); equal points do not dominate each other; each other point
    # is best on some axis combination.
    assert pareto_front(pts) == [0, 1, 3, 4]
    assert pareto_front([]) == [] and pareto_front([(5.0, 5.0, 0.0)]) == [0]


def test_pareto_front_matches_the_definition_on_random_points() -> None:
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.randint(0, 4) * 1.0, rng.randint(0, 4) * 1.0, rng.randint(0, 4) * 1.0) for _ in range(12)]
        expected = [i for i, p in enumerate(pts) if not any(_dominates(q, p) for q in pts)]
        assert pareto_front(pts) == expected


def _system(value: float, cost: float, p50: float) -> dict:
    return {
        "metrics": {"rouge_l": {"value": value, "low": value, "high": value, "higher_is_better": True}},
        "cost_usd": {"per_1k_records": cost, "total": cost},
        "latency_ms": {"p50": p50, "p95": p50, "p99": p50, "mean": p50},
        "ttft_ms": {"p50": None, "mean": None},
        "tokens": {"prompt": 0, "completion": 0},
        "n_ok": 1, "n_failed": 0, "cache_hits": 0, "records": [],
    }  # fmt: skip


def test_reports_with_several_systems_name_the_front() -> None:
    report = {
        "task": {"name": "t", "type": "generate", "metrics": ["rouge_l"], "n_records": 1},
        "manifest": {"bootstrap": {"confidence": 0.95}},
        "systems": {
            "cheap": _system(0.3, 1.0, 50),
            "good": _system(0.6, 3.0, 80),
            "bad": _system(0.2, 2.0, 90),
        },
    }
    assert "Pareto front on (rouge_l, cost, latency): cheap, good" in render_summary(report)
    html = render_html(report, pngs={})
    assert "<b>Pareto front</b> on (rouge_l high, cost low, p50 latency low): cheap, good</p>" in html
