"""``nanoforge eval``: run tasks, compare reports, and round-trip human annotations.

    nanoforge eval run task.yaml --backend grpc:127.0.0.1:50051 --out runs/eval
    nanoforge eval run task.yaml --backend ours=grpc:127.0.0.1:50051 --backend api=openai:http://h/v1
    nanoforge eval run task.yaml --backend local:models/tiny --baseline old/report.json --fail-on-regression
    nanoforge eval run qrels.yaml --backend retriever:127.0.0.1:50052      # retrieval / rag task types
    nanoforge eval compare a/report.json b/report.json
    nanoforge eval export-human a/report.json --out pairs.csv --pair-with b/report.json --key key.json
    nanoforge eval import-human pairs.csv --report a/report.json --key key.json

What it deliberately does not do: start servers (except the ``local`` backend's own child process).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import yaml

from nanoforge.cli import UserError, progress
from nanoforge.evaluation import human
from nanoforge.evaluation.backends import Backend, build_backend, grpc_embed_fn, parse_spec
from nanoforge.evaluation.cache import ResponseCache
from nanoforge.evaluation.cost import parse_prices
from nanoforge.evaluation.harness import Record, RunOptions, build_report, run_system, tokenizer_fingerprint
from nanoforge.evaluation.human import judge_human_agreement
from nanoforge.evaluation.judge import run_judge
from nanoforge.evaluation.report import (
    compare_reports,
    find_regressions,
    load_report,
    render_summary,
    write_report,
)
from nanoforge.evaluation.task import load_task


@click.group("eval")
def group() -> None:
    """Evaluate systems: tasks, metrics with intervals, cost/latency, reports, human eval."""


def _split_name(spec: str) -> tuple[str | None, str]:
    name, eq, rest = spec.partition("=")
    if eq and ":" not in name:
        return name, rest
    return None, spec


async def _run_all(
    task: Any, specs: list[str], opts: RunOptions, cache: ResponseCache | None, model: str, token: str | None
) -> dict[str, tuple[Backend, list[Record]]]:
    systems: dict[str, tuple[Backend, list[Record]]] = {}
    with progress() as bar:
        for spec in specs:
            name, body = _split_name(spec)
            backend = build_backend(body, model=model, token=token)
            name = name or body
            task_id = bar.add_task(
                name, total=min(len(task.records), opts.limit or len(task.records)), info=""
            )

            def advance(_rec: Record, t: Any = task_id) -> None:
                bar.advance(t)

            try:
                records = await run_system(task, backend, cache=cache, opts=opts, on_record=advance)
            finally:
                await backend.aclose()
            systems[name] = (backend, records)
    return systems


@group.command("run")
@click.argument("task_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--backend",
    "backends",
    multiple=True,
    default=["grpc:127.0.0.1:50051"],
    show_default=True,
    help="[NAME=]KIND:TARGET; KIND is grpc, openai, anthropic, local, retriever or recommender. Repeat to compare.",
)
@click.option("--model", default="", help="Model name sent to the backends.")
@click.option("--token", default=None, envvar="NANOFORGE_TOKEN", help="Bearer token / API key.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("eval-out"),
    show_default=True,
)
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite response cache. Default: OUT/cache.sqlite.",
)
@click.option("--no-cache", is_flag=True, help="Do not read or write the response cache.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1))
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=0, show_default=True, type=int, help="Bootstrap and retry-jitter seed.")
@click.option(
    "--resamples", default=1000, show_default=True, type=click.IntRange(1), help="Bootstrap resamples."
)
@click.option("--limit", default=None, type=click.IntRange(1), help="Evaluate only the first N records.")
@click.option(
    "--prices",
    "prices_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML price table overriding the defaults (see nanoforge.evaluation.cost).",
)
@click.option(
    "--fewshot-embed",
    default=None,
    help="grpc:HOST:PORT whose Embed RPC ranks similar few-shot examples (default: bag-of-words cosine).",
)
@click.option(
    "--baseline",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A previous report.json to compare against.",
)
@click.option(
    "--fail-on-regression", is_flag=True, help="Exit 1 when a metric falls outside the baseline interval."
)
@click.option("--judge-backend", default=None, help="KIND:TARGET overriding the task's judge.backend.")
@click.option("--no-judge", is_flag=True, help="Skip the task's LLM judge.")
def run_cmd(task_file: Path, backends: tuple[str, ...], model: str, token: str | None, out_dir: Path,
            cache_path: Path | None, no_cache: bool, concurrency: int, retries: int, seed: int, resamples: int,
            limit: int | None, prices_file: Path | None, fewshot_embed: str | None, baseline: Path | None,
            fail_on_regression: bool, judge_backend: str | None, no_judge: bool) -> None:  # fmt: skip
    """Run TASK_FILE against every --backend and write report.json / .md / .html into --out."""
    if fail_on_regression and baseline is None:
        raise UserError("--fail-on-regression needs --baseline REPORT.json")
    for spec in backends:
        parse_spec(_split_name(spec)[1])
    task = load_task(task_file)
    prices = parse_prices(yaml.safe_load(prices_file.read_text()) or {}) if prices_file else None
    opts = RunOptions(concurrency=concurrency, retries=retries, seed=seed, n_resamples=resamples, limit=limit)
    if prices is not None:
        opts.prices = prices
    if fewshot_embed is not None:
        kind, target = parse_spec(fewshot_embed)
        if kind != "grpc":
            raise UserError(f"bad --fewshot-embed {fewshot_embed!r}; accepted: grpc:HOST:PORT")
        opts.embed = grpc_embed_fn(target, model=model, token=token)
    cache = None if no_cache else ResponseCache(cache_path or out_dir / "cache.sqlite")
    try:
        systems = asyncio.run(_run_all(task, list(backends), opts, cache, model, token))
    finally:
        if cache is not None:
            cache.close()
    tok = None
    for spec in backends:
        kind, target = parse_spec(_split_name(spec)[1])
        if kind == "local":
            tok = tokenizer_fingerprint(target)
    judge_section = None
    if task.judge is not None and not no_judge:
        if judge_backend:
            task.judge.backend = judge_backend
            parse_spec(judge_backend)
        judge_section = asyncio.run(
            run_judge(
                task.judge, {n: recs for n, (_, recs) in systems.items()}, n_resamples=resamples, seed=seed
            )
        )
    report = build_report(task, systems, opts, tokenizer=tok, judge=judge_section)
    paths = write_report(report, out_dir)
    click.echo(render_summary(report).rstrip())
    click.echo(f"\nwrote {paths['json']}, {paths['md']}, {paths['html']}")
    if baseline is not None:
        problems = find_regressions(report, load_report(baseline))
        for line in problems:
            click.echo(f"regression: {line}", err=True)
        if not problems:
            click.echo(f"no regression against {baseline}")
        if problems and fail_on_regression:
            raise SystemExit(1)


@group.command("compare")
@click.argument("report_a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("report_b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--system-a", default=None, help="System in REPORT_A (default: its first).")
@click.option("--system-b", default=None, help="System in REPORT_B (default: its first).")
@click.option("--resamples", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write JSON here.",
)
def compare_cmd(report_a: Path, report_b: Path, system_a: str | None, system_b: str | None, resamples: int, seed: int,
                out_file: Path | None) -> None:  # fmt: skip
    """Paired bootstrap B - A on the records both reports answered."""
    result = compare_reports(
        load_report(report_a), load_report(report_b), system_a=system_a, system_b=system_b,
        n_resamples=resamples, seed=seed,
    )  # fmt: skip
    click.echo(f"A = {result['a']}, B = {result['b']}, {result['n_shared']} shared records")
    click.echo("| metric | A | B | B - A | 95% CI | p (sign flips) |\n|---|---|---|---|---|---|")
    for name, m in result["metrics"].items():
        click.echo(
            f"| {name} | {m['a']:.4g} | {m['b']:.4g} | {m['diff']:+.4g} | [{m['low']:.4g}, {m['high']:.4g}] "
            f"| {m['p_value']:.3f} |"
        )
    if out_file is not None:
        from nanoforge.evaluation.io import write_text_atomic

        write_text_atomic(out_file, json.dumps(result, indent=1))


@group.command("export-human")
@click.argument("report_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Annotation file (.csv or .jsonl).",
)
@click.option(
    "--pair-with",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A second report: export blind pairs instead of single outputs.",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the hidden pair order goes (required with --pair-with).",
)
@click.option("--system", default=None, help="System of REPORT_FILE (default: its first).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the blind left/right order.")
def export_human_cmd(report_file: Path, out_file: Path, pair_with: Path | None, key_file: Path | None,
                     system: str | None, seed: int) -> None:  # fmt: skip
    """Write samples of a report for human annotation."""
    report = load_report(report_file)
    if pair_with is None:
        n = human.export_single(report, out_file, system=system)
    else:
        if key_file is None:
            raise UserError("--pair-with needs --key KEY.json (the hidden order; keep it from annotators)")
        n = human.export_pairs(report, load_report(pair_with), out_file, key_file, seed=seed, system_a=system)
    click.echo(f"wrote {n} items to {out_file}" + (f" (key: {key_file})" if key_file else ""))


@group.command("import-human")
@click.argument("ratings_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--report",
    "report_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The report to fold the ratings into (rewritten in place, with its .md/.html beside it).",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The key file of a blind-pairs export.",
)
@click.option("--name", default=None, help="Name of this annotation round (default: the ratings file stem).")
@click.option(
    "--system", default=None, help="System the single ratings are of (default: the report's first)."
)
def import_human_cmd(
    ratings_file: Path, report_file: Path, key_file: Path | None, name: str | None, system: str | None
) -> None:
    """Summarise filled annotations (agreement included) and add them to the report."""
    key = json.loads(key_file.read_text()) if key_file else None
    summary = human.import_ratings(ratings_file, key=key)
    report = load_report(report_file)
    if report.get("judge"):
        try:
            summary["judge_agreement"] = judge_human_agreement(
                report["judge"], summary, system or next(iter(report["systems"]))
            )
        except ValueError as exc:
            click.echo(f"no judge-vs-human agreement: {exc}", err=True)
    report.setdefault("human", {})[name or ratings_file.stem] = summary
    write_report(report, report_file.parent, stem=report_file.stem)
    agree = summary["agreement"]
    click.echo(
        f"{summary['n_ratings']} ratings from {len(agree['raters'])} raters; "
        f"Cohen's kappa {agree.get('cohen_kappa', 'n/a')}, Fleiss' kappa {agree.get('fleiss_kappa', 'n/a')}"
    )
    if "judge_agreement" in summary:
        ja = summary["judge_agreement"]
        click.echo(
            f"judge vs human on {ja['n']} items: Cohen's kappa {ja.get('cohen_kappa', 'n/a')}, "
            f"Spearman {ja.get('spearman', 'n/a')}"
        )


@group.command("guard")
@click.argument("text", required=False)
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Guardrails YAML: {input: [rail specs], output: [rail specs]} (see nanoforge.evaluation.guardrails).",
)
@click.option("--stage", type=click.Choice(["input", "output"]), default="input", show_default=True)
@click.option(
    "--chunks",
    "chunks_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON list of the retrieved chunks an output cites (groundedness).",
)
def guard_cmd(text: str | None, config_file: Path, stage: str, chunks_file: Path | None) -> None:
    """Check TEXT (default: stdin) with a guardrails pipeline; print the decision as JSON. Exit 2 when blocked."""
    import sys

    from nanoforge.evaluation.guardrails import Pipeline

    rails = Pipeline.from_file(config_file)
    text = sys.stdin.read() if text is None else text
    chunks = json.loads(chunks_file.read_text(encoding="utf-8")) if chunks_file else []
    if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
        raise UserError(f"--chunks must hold a JSON list of strings, got {type(chunks).__name__}")
    result = rails.check_input(text) if stage == "input" else rails.check_output(text, chunks)
    click.echo(json.dumps(result.to_dict(), indent=2))
    if not result.allowed:
        raise SystemExit(2)
