"""Experiment: precision, recall and latency of each guardrail on the hand-written labelled set.

    .venv/bin/python tools/experiments/guardrails.py --out docs/experiments

Scores every example of ``nanoforge/evaluation/data/guardrails_labelled.jsonl`` with its rail (configured as
``labelled.EVAL_RAILS``), separately for the ``dev`` split (written alongside the heuristics and used to
tune them: in-sample) and the ``holdout`` split (written afterwards and scored once, with no tuning after
seeing the result). Latency is the mean / max over ``--repeats`` applications of each example, and the
scaling of each rail with input length (the labelled texts of the rail concatenated to ~1, 10 and 100 KB).

Writes ``guardrails.md`` and ``guardrails.png`` (latency vs input size) into ``--out`` and prints the tables.
What it does not do: compare with other guardrail libraries (none is installed here), or use ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

from nanoforge.evaluation.guardrails.labelled import EVAL_RAILS, evaluate, load_labelled
from nanoforge.evaluation.guardrails.registry import build_rail
from nanoforge.evaluation.io import write_bytes_atomic, write_text_atomic

SIZES_KB = (1, 10, 100)


def fmt(x: float) -> str:
    return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.2f}"


def quality_table(report: dict, key: str) -> list[str]:
    lines = [
        "| rail | n | TP | FP | FN | TN | precision | recall | mean ms | max ms |"
        if key == "rails"
        else "| PII kind | TP | FP | FN | precision | recall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        if key == "rails"
        else "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in report[key].items():
        if key == "rails":
            lines.append(
                f"| {name} | {s['n']} | {s['tp']} | {s['fp']} | {s['fn']} | {s['tn']} | {fmt(s['precision'])} | "
                f"{fmt(s['recall'])} | {s['latency_ms_mean']:.3f} | {s['latency_ms_max']:.3f} |"
            )
        else:
            lines.append(
                f"| {name} | {s['tp']} | {s['fp']} | {s['fn']} | {fmt(s['precision'])} | {fmt(s['recall'])} |"
            )
    return lines


def error_lines(report: dict, rows: dict[str, dict]) -> list[str]:
    out = []
    for ids in report["errors"].values():
        for i in ids:
            row = rows[i]
            what = "missed (FN)" if row["label"] else "false alarm (FP)"
            note = f" — {row['note']}" if row["note"] else ""
            out.append(f"- `{i}` {what}: {row['text'][:90]!r}{note}")
    return out or ["- none"]


def latency_scaling(examples: list[dict], repeats: int) -> dict[str, list[float]]:
    """Median ms of each rail on its own labelled texts concatenated to each size in ``SIZES_KB``."""
    out: dict[str, list[float]] = {}
    for name, spec in EVAL_RAILS.items():
        rail = build_rail(spec)
        own = [e for e in examples if e["rail"] == name]
        base = "\n".join(e["text"] for e in own)
        chunks = sorted({c for e in own for c in e.get("chunks", [])})
        row = []
        for kb in SIZES_KB:
            if (
                name == "json_schema"
            ):  # a valid-JSON object of the size, so the parser and validator do the work
                pad = kb * 1024 - len('{"label": "neutral", "confidence": 0.5, "items": []}')
                text = json.dumps({"label": "neutral", "confidence": 0.5, "items": list(range(pad // 6))})
            else:
                text = (base + "\n") * (kb * 1024 // (len(base) + 1) + 1)
                text = text[: kb * 1024]
            times = []
            for _ in range(max(1, repeats // kb)):
                t0 = time.perf_counter()
                rail.apply(text, chunks)
                times.append((time.perf_counter() - t0) * 1000)
            row.append(statistics.median(times))
        out[name] = row
    return out


def plot(scaling: dict[str, list[float]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ms in scaling.items():
        ax.plot(SIZES_KB, ms, marker="o", label=name)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="input size (KB)",
        ylabel="median latency (ms)",
        title="Guardrail latency vs input size",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes_atomic(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/experiments"))
    parser.add_argument("--repeats", type=int, default=20, help="Applications per example for latency.")
    args = parser.parse_args()

    examples = load_labelled()
    by_id = {e["id"]: e for e in examples}
    splits = {
        "dev (in-sample: heuristics tuned on it)": [e for e in examples if e["split"] == "dev"],
        "holdout (written after tuning, scored once)": [e for e in examples if e["split"] == "holdout"],
        "all": examples,
    }
    md = [
        "# Guardrails: precision, recall and latency per rail",
        "",
        f"Command: `.venv/bin/python tools/experiments/guardrails.py --out {args.out} --repeats {args.repeats}`",
        "",
        f"Labelled set: `packages/evaluation/src/nanoforge/evaluation/data/guardrails_labelled.jsonl`, {len(examples)} "
        f"hand-written examples ({sum(e['label'] for e in examples)} positives, "
        f"{sum('hard negative' in e['note'] for e in examples)} marked hard negatives). Label 1 = the rail should fire "
        "(PII present, injection, denied topic, schema violation, unsupported answer). Rails configured as "
        "`labelled.EVAL_RAILS` (injection threshold 0.5, groundedness coverage threshold 0.6). "
        f"Python {platform.python_version()}, one process on a shared 2-core machine; latency is wall time per "
        f"`apply` call, mean and max over {args.repeats} repeats of every example.",
        "",
        "The set is small and was written by the person who wrote the heuristics: read the dev numbers as a "
        "regression check, the holdout numbers (a few examples per rail) as a rough sanity check, and neither "
        "as a benchmark.",
        "",
    ]
    print(md[2])
    for title, rows in splits.items():
        report = evaluate(rows, repeats=args.repeats)
        table = quality_table(report, "rails")
        print(f"\n== {title} ==\n" + "\n".join(table))
        md += [f"## {title}: {len(rows)} examples", "", *table, ""]
        if title == "all":
            kinds = quality_table(report, "pii_kinds")
            print("\n" + "\n".join(kinds))
            md += [
                "PII per kind (an example counts for a kind when it contains / is reported with that kind):",
                "",
                *kinds,
                "",
            ]
        md += ["Errors:", "", *error_lines(report, by_id), ""]

    scaling = latency_scaling(examples, args.repeats)
    lat = [
        "| rail | " + " | ".join(f"{kb} KB ms" for kb in SIZES_KB) + " |",
        "|---|" + "---:|" * len(SIZES_KB),
    ]
    lat += [f"| {name} | " + " | ".join(f"{ms:.2f}" for ms in row) + " |" for name, row in scaling.items()]
    print("\n== median latency vs input size ==\n" + "\n".join(lat))
    plot(scaling, args.out / "guardrails.png")
    md += [
        "## Latency vs input size",
        "",
        "Median over repeats of one `apply` on the rail's own labelled texts concatenated to the size "
        "(groundedness: answer sentences against all of the set's chunks; json_schema: one valid JSON object of "
        "that size with a long integer list, which fails `additionalProperties` so the validator reports it).",
        "",
        *lat,
        "",
        "![latency vs size](guardrails.png)",
        "",
    ]
    md += [
        "## Reading the errors",
        "",
        "- The misses are the limits of surface heuristics: obfuscated e-mails (`[at]`), paraphrased "
        "overrides and role-play without the trigger phrases, hyphenated deny-list phrases (`nerve-agent` vs "
        "`nerve agent`), negations and counts written as words in grounded answers. Each needs a model "
        "(NER, an injection classifier, NLI) on top of the rail, not more regexes.",
        "- The false alarms are structural look-alikes: dotted version strings and grouped meeting ids pass "
        "the phone checks (no numbering-plan database here), and a heavy paraphrase has too little word "
        "overlap with its chunk to count as supported.",
        "- Latency grows roughly linearly with input size; at chat-message sizes (~1 KB) every rail costs well "
        "under a millisecond, so running all of them as middleware is cheap next to one decoding step. "
        "Max latencies of several ms are scheduler noise on the shared machine (the medians are stable).",
        "",
    ]
    write_text_atomic(args.out / "guardrails.md", "\n".join(md))
    print(f"\nwrote {args.out / 'guardrails.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
