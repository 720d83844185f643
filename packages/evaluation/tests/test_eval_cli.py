"""``nanoforge eval run | compare | export-human | import-human`` end to end against a real server."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from nanoforge.evaluation.cli import group

ROWS = [{"id": f"r{i}", "question": f"what is item {i}", "answer": "four"} for i in range(6)]


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def _task(write_task: Any) -> Path:
    return write_task(ROWS, id_field="id", template="Question: {{ question }}? Answer:", target_field="answer",
                      metrics=["token_f1", "exact_match"], sampling={"max_new_tokens": 4, "temperature": 0.0})  # fmt: skip


def test_run_two_systems_then_regression_gate_both_ways(
    server: Any, anthropic_stub: Any, write_task: Any, tmp_path: Path
) -> None:
    task = _task(write_task)
    out = tmp_path / "run1"
    res = _invoke("run", str(task), "--backend", f"ours=grpc:{server.grpc_target}",
                  "--backend", f"api=anthropic:{anthropic_stub.base_url}", "--out", str(out), "--resamples", "100")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["systems"]) == {"ours", "api"}
    assert report["systems"]["ours"]["n_ok"] == 6 and report["systems"]["api"]["n_ok"] == 6
    assert "Pareto front on (token_f1, cost, latency):" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2
    assert (out / "cache.sqlite").is_file()

    # Same system, same data, against its own report: nothing regresses (and everything is cached).
    out2 = tmp_path / "run2"
    ok = _invoke("run", str(task), "--backend", f"ours=grpc:{server.grpc_target}", "--out", str(out2),
                 "--cache", str(out / "cache.sqlite"), "--resamples", "100",
                 "--baseline", str(out / "report.json"), "--fail-on-regression")  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "no regression" in ok.output
    assert json.loads((out2 / "report.json").read_text())["systems"]["ours"]["cache_hits"] == 6

    # A baseline whose interval lies above today's value: the gate fails with exit 1 and names the metric.
    better = json.loads((out / "report.json").read_text())
    for name in ("token_f1", "exact_match"):
        value = better["systems"]["ours"]["metrics"][name]["value"]
        better["systems"]["ours"]["metrics"][name].update(
            value=value + 0.5, low=value + 0.3, high=value + 0.7
        )
    base = tmp_path / "better.json"
    base.write_text(json.dumps(better))
    bad = CliRunner().invoke(group, ["run", str(task), "--backend", f"ours=grpc:{server.grpc_target}",
                                     "--out", str(tmp_path / "run3"), "--resamples", "100",
                                     "--baseline", str(base), "--fail-on-regression"])  # fmt: skip
    assert bad.exit_code == 1
    assert "regression: ours: token_f1" in bad.output

    # compare: paired bootstrap between the two systems of run 1.
    cmp_out = tmp_path / "cmp.json"
    cmp = _invoke("compare", str(out / "report.json"), str(out / "report.json"), "--system-a", "ours",
                  "--system-b", "api", "--resamples", "100", "--out", str(cmp_out))  # fmt: skip
    assert cmp.exit_code == 0, cmp.output
    result = json.loads(cmp_out.read_text())
    assert result["n_shared"] == 6 and set(result["metrics"]) == {"token_f1", "exact_match"}
    m = result["metrics"]["token_f1"]
    assert m["diff"] == m["b"] - m["a"] and m["low"] <= m["diff"] <= m["high"]


def test_human_export_import_folds_into_report(
    server: Any, anthropic_stub: Any, write_task: Any, tmp_path: Path
) -> None:
    task = _task(write_task)
    for name, spec in (("a", f"grpc:{server.grpc_target}"), ("b", f"anthropic:{anthropic_stub.base_url}")):
        assert (
            _invoke(
                "run", str(task), "--backend", spec, "--out", str(tmp_path / name), "--resamples", "50"
            ).exit_code
            == 0
        )
    pairs, key = tmp_path / "pairs.csv", tmp_path / "key.json"
    res = _invoke("export-human", str(tmp_path / "a/report.json"), "--out", str(pairs),
                  "--pair-with", str(tmp_path / "b/report.json"), "--key", str(key), "--seed", "2")  # fmt: skip
    assert res.exit_code == 0 and "wrote 6 items" in res.output
    rows = list(csv.DictReader(pairs.open()))
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["item_id", "rater", "preference"])
        w.writeheader()
        for r in rows:  # both raters prefer the stub's answers ("stub: ..."); they disagree on one item
            stub_side = "1" if r["output_1"].startswith("stub:") else "2"
            w.writerow({"item_id": r["item_id"], "rater": "ann", "preference": stub_side})
            w.writerow(
                {
                    "item_id": r["item_id"],
                    "rater": "bob",
                    "preference": "tie" if r["item_id"] == "r0" else stub_side,
                }
            )
    imp = _invoke("import-human", str(filled), "--report", str(tmp_path / "a/report.json"), "--key", str(key))
    assert imp.exit_code == 0, imp.output
    report = json.loads((tmp_path / "a/report.json").read_text())
    human = report["human"]["filled"]
    systems = json.loads(key.read_text())["systems"]
    assert human["wins"][systems[1]] == 11 / 12 and human["ties"] == 1 / 12
    assert "cohen_kappa" in human["agreement"] and "fleiss_kappa" in human["agreement"]
    assert "Human evaluation" in (tmp_path / "a/report.md").read_text()


def test_cli_errors_are_one_line(write_task: Any, tmp_path: Path) -> None:
    task = _task(write_task)
    res = CliRunner().invoke(group, ["run", str(task), "--backend", "nope:x"])
    assert res.exit_code != 0 and "bad backend spec 'nope:x'" in str(res.exception)
    res = CliRunner().invoke(group, ["run", str(task), "--fail-on-regression"])
    assert res.exit_code == 1 and "--fail-on-regression needs --baseline" in res.output
