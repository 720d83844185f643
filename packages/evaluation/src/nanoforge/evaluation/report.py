"""Reports: JSON (the source of truth), Markdown and self-contained HTML with embedded PNG plots; system
comparisons (paired bootstrap) and the CI regression gate.

Plots (matplotlib, Agg backend, embedded as base64 so the HTML is one file): quality vs cost and quality
vs latency with the Pareto front marked, and per-metric bars with their bootstrap intervals.
``find_regressions`` flags a metric whose new value falls outside the baseline's interval on the bad side.

What it deliberately does not do: serve the report, or recompute anything but paired comparisons.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nanoforge.evaluation.harness import REPORT_FORMAT, REPORT_VERSION, record_view
from nanoforge.evaluation.io import write_bytes_atomic, write_text_atomic
from nanoforge.evaluation.metrics import get_metric
from nanoforge.evaluation.stats import paired_bootstrap


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report JSON and check its format name and version.

    Raises:
        ValueError: if the file is not a nanoforge evaluation report of a known version.
    """
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path}: not a {REPORT_FORMAT} file")
    if report.get("version") != REPORT_VERSION:
        raise ValueError(f"{path}: report version {report.get('version')!r}; accepted: {REPORT_VERSION}")
    return report


def headline(report: Mapping[str, Any]) -> str:
    """The first metric of the task: the quality axis of the trade-off plots."""
    return str(report["task"]["metrics"][0])


def pareto_front(points: Sequence[tuple[float, float, float]]) -> list[int]:
    """Indices of points not dominated on (cost low, latency low, quality high).

    >>> pareto_front([(1, 1, 0.5), (2, 2, 0.4), (2, 1, 0.9)])
    [0, 2]
    """
    front = []
    for i, (c, lat, q) in enumerate(points):
        dominated = any(
            c2 <= c and l2 <= lat and q2 >= q and (c2, l2, q2) != (c, lat, q)
            for j, (c2, l2, q2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def tradeoff_points(report: Mapping[str, Any]) -> list[tuple[str, float, float, float]]:
    """(system, cost per 1k records, p50 latency ms, oriented quality) for every system with a value."""
    name = headline(report)
    out = []
    for sys_name, s in report["systems"].items():
        m = s["metrics"].get(name)
        if not m or m["value"] is None or math.isnan(m["value"]):
            continue
        quality = m["value"] if m["higher_is_better"] else -m["value"]
        out.append((sys_name, s["cost_usd"]["per_1k_records"] or 0.0, s["latency_ms"]["p50"] or 0.0, quality))
    return out


# ---------------------------------------------------------------------------------------------- plots
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(report: Mapping[str, Any]) -> dict[str, str]:
    """Base64 PNGs: ``tradeoff`` (quality vs cost and vs latency, Pareto front) and ``metrics`` (bars + CIs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    pts = tradeoff_points(report)
    if pts:
        front = set(pareto_front([(c, lat, q) for _, c, lat, q in pts]))
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, idx, label in ((axes[0], 1, "cost per 1k records (USD)"), (axes[1], 2, "p50 latency (ms)")):
            for i, p in enumerate(pts):
                ax.scatter(p[idx], p[3], marker="*" if i in front else "o", s=120 if i in front else 50)
                ax.annotate(p[0], (p[idx], p[3]), fontsize=8, xytext=(4, 4), textcoords="offset points")
            on_front = sorted((p[idx], p[3]) for i, p in enumerate(pts) if i in front)
            ax.plot([x for x, _ in on_front], [y for _, y in on_front], "k--", lw=0.8, label="Pareto front")
            ax.set_xlabel(label)
            ax.set_ylabel(
                headline(report) + ("" if pts and pts[0][3] >= 0 else " (negated: lower is better)")
            )
            ax.legend(fontsize=8)
        fig.suptitle("quality vs cost vs latency", y=1.03)
        out["tradeoff"] = _png(fig)
    names = list(report["task"]["metrics"])
    systems = list(report["systems"])
    if names and systems:
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 3.5), squeeze=False)
        for ax, metric in zip(axes[0], names, strict=True):
            vals, lows, highs = [], [], []
            for s in systems:
                m = report["systems"][s]["metrics"][metric]
                v = m["value"] if m["value"] is not None else math.nan
                vals.append(v)
                lows.append(max(v - m["low"], 0) if not math.isnan(v) and m["low"] is not None else 0)
                highs.append(max(m["high"] - v, 0) if not math.isnan(v) and m["high"] is not None else 0)
            ax.bar(range(len(systems)), vals, yerr=[lows, highs], capsize=4, color="tab:blue", alpha=0.8)
            ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right", fontsize=7)
            ax.set_title(metric)
        fig.suptitle("metrics with bootstrap intervals", y=1.03)
        out["metrics"] = _png(fig)
    return out


# ---------------------------------------------------------------------------------------------- text
def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _tables(report: Mapping[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    metrics = report["task"]["metrics"]
    conf = report["manifest"]["bootstrap"]["confidence"]
    quality_head = ["system", *[f"{m} [{conf:.0%} CI]" for m in metrics], "ok / failed"]
    quality = []
    for name, s in report["systems"].items():
        cells = [
            f"{_fmt(s['metrics'][m]['value'])} [{_fmt(s['metrics'][m]['low'])}, {_fmt(s['metrics'][m]['high'])}]"
            for m in metrics
        ]
        quality.append([name, *cells, f"{s['n_ok']} / {s['n_failed']}"])
    cost_head = [
        "system",
        "p50 latency ms",
        "p95 latency ms",
        "mean TTFT ms",
        "tokens in",
        "tokens out",
        "USD / 1k",
        "cache hits",
    ]
    costs = [
        [
            name,
            _fmt(s["latency_ms"]["p50"]),
            _fmt(s["latency_ms"]["p95"]),
            _fmt(s["ttft_ms"]["mean"]),
            str(s["tokens"]["prompt"]),
            str(s["tokens"]["completion"]),
            _fmt(s["cost_usd"]["per_1k_records"]),
            str(s["cache_hits"]),
        ]
        for name, s in report["systems"].items()
    ]
    return [(quality_head, quality), (cost_head, costs)]


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _human_lines(report: Mapping[str, Any]) -> list[str]:
    human = report.get("human")
    if not human:
        return []
    lines = ["## Human evaluation", ""]
    for name, h in human.items():
        agree = h.get("agreement", {})
        if h["kind"] == "pairs":
            wins = ", ".join(f"{k}: {_fmt(v, 3)}" for k, v in h["wins"].items())
            lines.append(
                f"- **{name}** (blind pairs, {h['n_ratings']} ratings): wins {wins}; ties {_fmt(h['ties'], 3)}"
            )
        else:
            lines.append(f"- **{name}** ({h['n_ratings']} ratings): mean rating {_fmt(h['mean_rating'], 3)}")
        lines.append(
            f"  raters {agree.get('raters')}: Cohen's kappa {_fmt(agree.get('cohen_kappa'), 3)}, "
            f"Fleiss' kappa {_fmt(agree.get('fleiss_kappa'), 3)}"
        )
    return [*lines, ""]


def _judge_lines(report: Mapping[str, Any]) -> list[str]:
    judge = report.get("judge")
    if not judge:
        return []
    lines = ["## LLM judge", "", f"Judge `{judge['backend']}` ({judge.get('model') or 'default model'}), "
             f"{judge['mode']} mode, schema-constrained verdicts.", ""]  # fmt: skip
    if judge["mode"] == "rubric":
        crits = judge["rubric"]
        head = ["system", "overall", *crits, "valid verdicts"]
        rows = []
        for name, s in judge["systems"].items():
            cells = [
                f"{_fmt(s['overall']['value'], 3)} [{_fmt(s['overall']['low'], 3)}, {_fmt(s['overall']['high'], 3)}]"
            ]
            cells += [_fmt(s["criteria"][c]["value"], 3) for c in crits]
            rows.append([name, *cells, f"{s['n_valid']} / {s['n']}"])
        lines += [_md_table(head, rows), ""]
    else:
        p = judge["pairs"]
        wins = ", ".join(f"{k}: {_fmt(v, 3)}" for k, v in p["wins"].items())
        lines += [
            f"- {p['a']} vs {p['b']} on {p['n']} items ({p['n_valid']} valid pairs, each judged in both orders): "
            f"wins {wins}; ties {_fmt(p['ties'], 3)}",
            f"- position-inconsistent pairs (resolved to tie): {p['position_inconsistent']} "
            f"(position-bias rate {_fmt(p['position_bias_rate'], 3)})",
            "",
        ]
    for round_name, h in (report.get("human") or {}).items():
        agree = h.get("judge_agreement")
        if agree:
            lines.append(
                f"- judge vs human round **{round_name}** ({agree['n']} items): Cohen's kappa "
                f"{_fmt(agree.get('cohen_kappa'), 3)}, Spearman {_fmt(agree.get('spearman'), 3)}"
            )
    return [*lines, ""]


def _failures(report: Mapping[str, Any], limit: int = 5) -> list[str]:
    lines = []
    for name, s in report["systems"].items():
        for r in [r for r in s["records"] if r["error"]][:limit]:
            lines.append(f"- {name} / record {r['id']}: {r['error']}")
    return ["## Failed records (first few)", "", *lines, ""] if lines else []


def render_summary(report: Mapping[str, Any]) -> str:
    """The quality and cost/latency tables and the Pareto front, as Markdown (what ``eval run`` prints)."""
    lines = []
    for head, rows in _tables(report):
        lines += [_md_table(head, rows), ""]
    pts = tradeoff_points(report)
    if pts:
        front = [pts[i][0] for i in pareto_front([(c, lat, q) for _, c, lat, q in pts])]
        lines += [f"Pareto front on ({headline(report)}, cost, latency): {', '.join(front)}", ""]
    return "\n".join(lines)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown (tables, Pareto front, failures, human eval, manifest)."""
    task = report["task"]
    lines = [
        f"# Evaluation: {task['name']}",
        "",
        f"{task['n_records']} records, task type `{task['type']}`.",
        "",
    ]
    lines += [render_summary(report)]
    lines += _judge_lines(report) + _failures(report) + _human_lines(report)
    lines += [
        "## Reproducibility manifest",
        "",
        "```json",
        json.dumps(report["manifest"], indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def render_html(report: Mapping[str, Any], pngs: Mapping[str, str] | None = None) -> str:
    """One self-contained HTML page: the Markdown tables as HTML plus the embedded plots.

    Args:
        report: the report dict.
        pngs: base64 PNGs from :func:`plots` (computed here when None).
    """
    pngs = plots(report) if pngs is None else pngs
    task = report["task"]
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Evaluation: {esc(task['name'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head><body>",
        f"<h1>Evaluation: {esc(task['name'])}</h1><p>{task['n_records']} records, task type {esc(task['type'])}.</p>",
    ]
    for head, rows in _tables(report):
        parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    pts = tradeoff_points(report)
    if len(pts) > 1:
        front = [pts[i][0] for i in pareto_front([(c, lat, q) for _, c, lat, q in pts])]
        parts.append(
            f"<p><b>Pareto front</b> on ({esc(headline(report))} high, cost low, p50 latency low): "
            f"{esc(', '.join(front))}</p>"
        )
    for key, title in (("tradeoff", "Quality vs cost vs latency"), ("metrics", "Metrics")):
        png = pngs.get(key)
        if png:
            parts.append(f"<h2>{title}</h2><img alt='{key}' src='data:image/png;base64,{png}'>")
    judge_block = _judge_lines(report)
    if judge_block:
        parts.append(f"<h2>LLM judge</h2><p>{esc(judge_block[2])}</p>")
        table = [line for line in judge_block if line.startswith("|")]
        if table:
            cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
            parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in cells[0]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells[2:]]
            parts.append("</table>")
        bullets = [line for line in judge_block if line.startswith("- ")]
        if bullets:
            parts.append("<ul>" + "".join(f"<li>{esc(b[2:])}</li>" for b in bullets) + "</ul>")
    for block in (_failures(report), _human_lines(report)):
        if block:
            parts.append(f"<h2>{esc(block[0][3:])}</h2><ul>")
            parts += [f"<li>{esc(line.lstrip('- '))}</li>" for line in block[2:] if line.strip()]
            parts.append("</ul>")
    parts.append(
        f"<h2>Reproducibility manifest</h2><pre>{esc(json.dumps(report['manifest'], indent=1))}</pre>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: Mapping[str, Any], out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Write ``STEM.json``, ``STEM.md`` and ``STEM.html`` (plus the PNGs) atomically into ``out_dir``."""
    out = Path(out_dir)
    pngs = plots(report)
    paths = {
        "json": write_text_atomic(out / f"{stem}.json", json.dumps(report, indent=1, allow_nan=True)),
        "md": write_text_atomic(out / f"{stem}.md", render_markdown(report)),
        "html": write_text_atomic(out / f"{stem}.html", render_html(report, pngs)),
    }
    for key, png in pngs.items():
        paths[key] = write_bytes_atomic(out / f"{key}.png", base64.b64decode(png))
    return paths


# ---------------------------------------------------------------------------------------------- compare / gate
def _system(report: Mapping[str, Any], name: str | None) -> tuple[str, Mapping[str, Any]]:
    systems = report["systems"]
    name = name or next(iter(systems))
    if name not in systems:
        raise ValueError(f"unknown system {name!r}; the report has: {', '.join(systems)}")
    return name, systems[name]


def compare_reports(
    report_a: Mapping[str, Any],
    report_b: Mapping[str, Any],
    *,
    system_a: str | None = None,
    system_b: str | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap (B - A) for every metric both reports have, on the records both answered."""
    name_a, sa = _system(report_a, system_a)
    name_b, sb = _system(report_b, system_b)
    ok_a = {r["id"]: r for r in sa["records"] if r["error"] is None}
    ok_b = {r["id"]: r for r in sb["records"] if r["error"] is None}
    shared = [i for i in ok_a if i in ok_b]
    extra = report_a["task"].get("metric_extra") or {"json_schema": report_a["task"].get("json_schema")}
    result: dict[str, Any] = {"a": name_a, "b": name_b, "n_shared": len(shared), "metrics": {}}
    for metric_name in [m for m in report_a["task"]["metrics"] if m in report_b["task"]["metrics"]]:
        metric = get_metric(metric_name)
        stats_a = [metric.record(record_view(ok_a[i], extra)) for i in shared]
        stats_b = [metric.record(record_view(ok_b[i], extra)) for i in shared]
        res = paired_bootstrap(stats_a, stats_b, metric.aggregate, n_resamples=n_resamples, seed=seed)
        result["metrics"][metric_name] = {**res.to_dict(), "higher_is_better": metric.higher_is_better}
    return result


def find_regressions(report: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """Metrics whose value fell outside the baseline's interval on the bad side, one line each.

    Systems are matched by name; with one system on each side they are matched to each other.
    """
    pairs: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = []
    new, old = report["systems"], baseline["systems"]
    if len(new) == 1 and len(old) == 1:
        (name, s_new), (_, s_old) = next(iter(new.items())), next(iter(old.items()))
        pairs.append((name, s_new, s_old))
    else:
        pairs += [(n, new[n], old[n]) for n in new if n in old]
    problems = []
    for name, s_new, s_old in pairs:
        for metric, m_old in s_old["metrics"].items():
            m_new = s_new["metrics"].get(metric)
            if m_new is None or m_new["value"] is None or m_old["low"] is None:
                continue
            value = m_new["value"]
            worse = value < m_old["low"] if m_old["higher_is_better"] else value > m_old["high"]
            if worse or math.isnan(value):
                bound = m_old["low"] if m_old["higher_is_better"] else m_old["high"]
                problems.append(
                    f"{name}: {metric} {_fmt(value)} is beyond the baseline interval "
                    f"[{_fmt(m_old['low'])}, {_fmt(m_old['high'])}] (bound {_fmt(bound)})"
                )
    return problems
