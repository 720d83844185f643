"""Agreement statistics on textbook examples, and the export -> annotate -> import round trip."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from nanoforge.evaluation.human import cohen_kappa, export_pairs, export_single, fleiss_kappa, import_ratings

# Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories; kappa = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_cohen_kappa_textbook() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = 0.5, kappa = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == 1.0
    with pytest.raises(ValueError, match="equal, non-empty"):
        cohen_kappa(["x"], [])


def test_fleiss_kappa_textbook() -> None:
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.2099, abs=1e-4)
    with pytest.raises(ValueError, match="same number of raters"):
        fleiss_kappa([[1, 1], [2, 1]])


def _report(outputs: dict[str, str], name: str) -> dict[str, Any]:
    records = [
        {"id": i, "prompt": f"p{i}", "output": o, "target": "t", "error": None} for i, o in outputs.items()
    ]
    records.append({"id": "bad", "prompt": "p", "output": "", "target": "t", "error": "UNAVAILABLE: down"})
    return {"systems": {name: {"records": records}}}


def test_single_export_and_import_with_two_raters(tmp_path: Path) -> None:
    out = tmp_path / "single.csv"
    assert export_single(_report({"1": "a", "2": "b", "3": "c"}, "s"), out) == 3
    rows = list(csv.DictReader(out.open()))
    assert [r["item_id"] for r in rows] == ["1", "2", "3"] and rows[0]["rating"] == ""
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["item_id", "rater", "rating"])
        w.writeheader()
        for item, r1, r2 in [("1", 5, 5), ("2", 3, 4), ("3", 1, 1)]:
            w.writerow({"item_id": item, "rater": "ann", "rating": r1})
            w.writerow({"item_id": item, "rater": "bob", "rating": r2})
    summary = import_ratings(filled)
    assert summary["kind"] == "single"
    assert summary["mean_rating"] == pytest.approx(19 / 6)
    # labels ann = [5, 3, 1], bob = [5, 4, 1]: p_o = 2/3, p_e = (1*1 + 1*1) / 9 = 2/9 -> kappa = 4/7
    assert summary["agreement"]["cohen_kappa"] == pytest.approx((2 / 3 - 2 / 9) / (1 - 2 / 9))
    assert "fleiss_kappa" in summary["agreement"]


def test_blind_pairs_hide_the_order_and_unblind_on_import(tmp_path: Path) -> None:
    a, b = (
        _report({str(i): f"A{i}" for i in range(8)}, "sysA"),
        _report({str(i): f"B{i}" for i in range(8)}, "sysB"),
    )
    out, key_file = tmp_path / "pairs.jsonl", tmp_path / "key.json"
    assert export_pairs(a, b, out, key_file, seed=1) == 8
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("sysA" not in json.dumps(r) and "sysB" not in json.dumps(r) for r in rows)
    key = json.loads(key_file.read_text())
    firsts = {key["order"][r["item_id"]][0] for r in rows}
    assert firsts == {"sysA", "sysB"}  # both orders occur with 8 items and this seed
    # One rater always prefers system A's output, wherever it was shown; another says tie.
    filled = tmp_path / "filled.jsonl"
    with filled.open("w") as fh:
        for r in rows:
            pick = "1" if r["output_1"].startswith("A") else "2"
            fh.write(json.dumps({"item_id": r["item_id"], "rater": "ann", "preference": pick}) + "\n")
            fh.write(json.dumps({"item_id": r["item_id"], "rater": "bob", "preference": "tie"}) + "\n")
    summary = import_ratings(filled, key=key)
    assert summary["wins"] == {"sysA": 0.5, "sysB": 0.0} and summary["ties"] == 0.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"item_id": "0", "preference": "left"}) + "\n")
    with pytest.raises(ValueError, match="preference 'left'; accepted: 1, 2, tie"):
        import_ratings(bad, key=key)
