"""Human evaluation: export samples for annotation, import ratings, and measure inter-rater agreement.

Two export shapes. ``single``: one row per record (prompt, output, target, an empty ``rating`` column).
``pairs``: one row per item both systems answered, the two outputs shown as ``output_1`` / ``output_2`` in
a seeded random order, with an empty ``preference`` column ("1", "2" or "tie"); which system is which lives
only in a separate key file, so annotators judge blind. Import reads the filled CSV/JSONL back (one row per
item and rater, a ``rater`` column), unblinds pairs with the key, and summarises: mean rating or win rates,
plus Cohen's kappa (two raters) and Fleiss' kappa (any fixed number of raters per item).

    >>> round(cohen_kappa(["y"] * 25 + ["n"] * 25, ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15), 3)
    0.4

Judges vs humans (:func:`judge_human_agreement`): Cohen's kappa of an LLM judge's labels (rounded scores or
pairwise winners) against the raters', and Spearman's rank correlation of the scores.

What it deliberately does not do: host an annotation UI, weight kappas, or handle a varying number of
raters per item in Fleiss' kappa (those items are reported and left out).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nanoforge.evaluation.io import read_rows, write_text_atomic

PREFERENCES = ("1", "2", "tie")


def cohen_kappa(rater_a: Sequence[Hashable], rater_b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e).

    Raises:
        ValueError: if the sequences are empty or differ in length.
    """
    if len(rater_a) != len(rater_b) or not rater_a:
        raise ValueError(
            f"cohen_kappa needs two equal, non-empty label lists, got {len(rater_a)} and {len(rater_b)}"
        )
    n = len(rater_a)
    p_o = sum(x == y for x, y in zip(rater_a, rater_b, strict=True)) / n
    ca, cb = Counter(rater_a), Counter(rater_b)
    p_e = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return 1.0 if p_e == 1.0 else (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an items x categories matrix of how many raters chose each category.

    Every row must sum to the same number of raters n >= 2.

    Raises:
        ValueError: on an empty matrix, rows of unequal sums, or fewer than two raters.
    """
    if not counts:
        raise ValueError("fleiss_kappa needs at least one item")
    totals = {sum(row) for row in counts}
    if len(totals) != 1:
        raise ValueError(f"fleiss_kappa needs the same number of raters on every item, got {sorted(totals)}")
    n = totals.pop()
    if n < 2:
        raise ValueError(f"fleiss_kappa needs >= 2 raters per item, got {n}")
    n_items, n_cats = len(counts), len(counts[0])
    p_items = [(sum(c * c for c in row) - n) / (n * (n - 1)) for row in counts]
    p_bar = sum(p_items) / n_items
    p_cats = [sum(row[j] for row in counts) / (n_items * n) for j in range(n_cats)]
    p_e = sum(p * p for p in p_cats)
    return 1.0 if p_e == 1.0 else (p_bar - p_e) / (1.0 - p_e)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    if path.suffix == ".jsonl":
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    elif path.suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["item_id"])
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, buf.getvalue())
    else:
        raise ValueError(f"bad annotation file {str(path)!r}; accepted suffixes: .csv, .jsonl")


def _ok_records(report: Mapping[str, Any], system: str | None) -> tuple[str, dict[str, dict[str, Any]]]:
    systems = report["systems"]
    name = system or next(iter(systems))
    if name not in systems:
        raise ValueError(f"unknown system {name!r}; the report has: {', '.join(systems)}")
    recs = {r["id"]: r for r in systems[name]["records"] if r.get("error") is None}
    return name, recs


def export_single(report: Mapping[str, Any], out: Path, *, system: str | None = None) -> int:
    """Write one row per successful record of ``system`` (default: the first); returns the row count."""
    _, recs = _ok_records(report, system)
    rows = [
        {"item_id": rid, "prompt": r["prompt"], "output": r["output"], "target": r["target"], "rating": ""}
        for rid, r in recs.items()
    ]
    _write_rows(out, rows)
    return len(rows)


def export_pairs(
    report_a: Mapping[str, Any],
    report_b: Mapping[str, Any],
    out: Path,
    key_out: Path,
    *,
    seed: int = 0,
    system_a: str | None = None,
    system_b: str | None = None,
) -> int:
    """Blind pairs on the items both systems answered; the hidden order goes to ``key_out`` (JSON)."""
    name_a, recs_a = _ok_records(report_a, system_a)
    name_b, recs_b = _ok_records(report_b, system_b)
    if name_a == name_b:
        name_b = name_b + " (B)"
    rng = random.Random(seed)
    rows, key = [], {}
    for rid in [r for r in recs_a if r in recs_b]:
        first, second = (name_a, name_b) if rng.random() < 0.5 else (name_b, name_a)
        outs = {name_a: recs_a[rid]["output"], name_b: recs_b[rid]["output"]}
        rows.append(
            {
                "item_id": rid,
                "prompt": recs_a[rid]["prompt"],
                "output_1": outs[first],
                "output_2": outs[second],
                "preference": "",
            }
        )
        key[rid] = [first, second]
    _write_rows(out, rows)
    write_text_atomic(key_out, json.dumps({"systems": [name_a, name_b], "order": key}, indent=1))
    return len(rows)


def _agreement(by_item: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    raters = sorted({r for labels in by_item.values() for r in labels})
    result: dict[str, Any] = {"raters": raters, "items": len(by_item)}
    if len(raters) == 2:
        both = [i for i, labels in by_item.items() if len(labels) == 2]
        if both:
            result["cohen_kappa"] = cohen_kappa(
                [by_item[i][raters[0]] for i in both], [by_item[i][raters[1]] for i in both]
            )
    if len(raters) >= 2:
        full = [labels for labels in by_item.values() if len(labels) == len(raters)]
        cats = sorted({v for labels in full for v in labels.values()})
        if full and cats:
            counts = [[Counter(labels.values())[c] for c in cats] for labels in full]
            result["fleiss_kappa"] = fleiss_kappa(counts)
        result["items_without_all_raters"] = len(by_item) - len(full)
    return result


def import_ratings(path: Path, *, key: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Summarise a filled annotation file; with ``key`` (from :func:`export_pairs`) it is read as pairs.

    Returns:
        ``{"kind": "single", "mean_rating", "n", "agreement", "by_item"}`` or
        ``{"kind": "pairs", "wins": {system: share}, "ties": share, "n", "agreement", "by_item"}``;
        ``by_item`` maps item id -> rater -> rating (single) or preferred system name / ``tie`` (pairs).

    Raises:
        ValueError: on a missing column, a non-numeric rating, or a preference outside "1", "2", "tie".
    """
    rows = read_rows(path)
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    field = "preference" if key is not None else "rating"
    for i, row in enumerate(rows, 1):
        for col in ("item_id", field):
            if col not in row:
                raise ValueError(f"{path}: row {i} has no {col!r} column; columns: {sorted(row)}")
        value = str(row[field]).strip()
        if value == "":
            continue
        if key is not None and value not in PREFERENCES:
            raise ValueError(f"{path}: row {i} preference {value!r}; accepted: {', '.join(PREFERENCES)}")
        by_item[str(row["item_id"])][str(row.get("rater") or "rater1")] = value
    summary: dict[str, Any] = {
        "n_ratings": sum(len(v) for v in by_item.values()),
        "agreement": _agreement(by_item),
    }
    if key is None:
        try:
            values = [float(v) for labels in by_item.values() for v in labels.values()]
        except ValueError as exc:
            raise ValueError(f"{path}: ratings must be numbers ({exc})") from None
        summary.update(
            kind="single",
            mean_rating=sum(values) / len(values) if values else None,
            by_item={item: dict(labels) for item, labels in by_item.items()},
        )
        return summary
    order = key["order"]
    wins: Counter[str] = Counter()
    ties = 0
    for item, labels in by_item.items():
        if item not in order:
            raise ValueError(f"{path}: item {item!r} is not in the key file")
        for pref in labels.values():
            if pref == "tie":
                ties += 1
            else:
                wins[order[item][int(pref) - 1]] += 1
    total = summary["n_ratings"] or 1
    summary.update(
        kind="pairs",
        wins={name: wins[name] / total for name in key["systems"]},
        ties=ties / total,
        # Unblinded: rater -> the preferred system's name or "tie" (what judge agreement compares with).
        by_item={
            item: {r: p if p == "tie" else order[item][int(p) - 1] for r, p in labels.items()}
            for item, labels in by_item.items()
        },
    )
    return summary


# ---------------------------------------------------------------------------------------------- LLM judges
def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant.

    >>> round(spearman([1, 2, 3, 4], [10, 20, 30, 40]), 6)
    1.0
    >>> round(spearman([1, 2, 3], [3, 2, 1]), 6)
    -1.0
    >>> round(spearman([1, 2, 3, 4], [1, 3, 2, 4]), 6)  # one swap: 1 - 6 * 2 / (4 * 15)
    0.8
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two equal lists of >= 2 values, got {len(x)} and {len(y)}")

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else math.nan


def _mean_score(value: Mapping[str, Any]) -> float:
    return sum(float(v["score"]) for v in value.values()) / len(value)


def _majority(labels: Mapping[str, str]) -> str:
    counts = Counter(labels.values()).most_common()
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else "tie"


def judge_human_agreement(judge: Mapping[str, Any], human: Mapping[str, Any], system: str) -> dict[str, Any]:
    """Agreement of a report's ``judge`` section (``judge.run_judge``) with one imported human round.

    Rubric judge vs single ratings of ``system``: Cohen's kappa of round(judge overall score) vs the raters'
    mean rating rounded, and Spearman of the scores. Pairwise judge vs blind-pair preferences: Cohen's kappa
    of the winners (system name or tie; the raters' majority, a split is a tie).

    Raises:
        ValueError: when the kinds do not match or the human summary has no per-item labels.
    """
    by_item = human.get("by_item")
    if not by_item:
        raise ValueError("the human round has no per-item labels (re-import it with this version)")
    if judge["mode"] == "rubric" and human["kind"] == "single":
        recs = judge["systems"][system]["records"]
        ids = [i for i in by_item if i in recs and recs[i]["scores"] is not None]
        j = [_mean_score(recs[i]["scores"]) for i in ids]
        h = [sum(float(v) for v in by_item[i].values()) / len(by_item[i]) for i in ids]
        out: dict[str, Any] = {"n": len(ids), "system": system}
        if ids:
            out["cohen_kappa"] = cohen_kappa([round(v) for v in j], [round(v) for v in h])
        if len(ids) >= 2:
            out["spearman"] = spearman(j, h)
        return out
    if judge["mode"] == "pairwise" and human["kind"] == "pairs":
        recs = judge["pairs"]["records"]
        ids = [i for i in by_item if i in recs and recs[i]["winner"] is not None]
        out = {"n": len(ids)}
        if ids:
            out["cohen_kappa"] = cohen_kappa(
                [recs[i]["winner"] for i in ids], [_majority(by_item[i]) for i in ids]
            )
        return out
    raise ValueError(f"cannot compare a {judge['mode']} judge with {human['kind']} human ratings")
