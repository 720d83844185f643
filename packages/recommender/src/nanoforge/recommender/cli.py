"""``nanoforge recommender``: train, evaluate, and recommend from the command line.

    nanoforge recommender train --config sim-tiny --out runs/rec [--resume] [train.max_iters=500 ...]
    nanoforge recommender eval --run runs/rec [--split test] [--negatives 100] [--plot reliability.png]
    nanoforge recommender recommend --run runs/rec --history events.jsonl [--user u0001] [-k 10] [--keep-seen]
    nanoforge recommender simulate --out events.jsonl [--users 50]

What it does: parses options, shows progress, prints tables / JSON lines; bad input becomes one
``error: ...`` line through the umbrella command. What it does not do: any modelling itself.
(``serve`` and ``ads`` come later, with the gRPC service.)
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from nanoforge.cli import UserError, progress


@click.group(name="recommender")
def group() -> None:
    """Sequential recommendation over user events: train, evaluate, recommend."""


@group.command("train")
@click.option("--config", "config", default="sim-tiny", show_default=True, help="YAML file or shipped name.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.argument("overrides", nargs=-1)
def train_cmd(config: str, out_dir: Path, resume: bool, overrides: tuple[str, ...]) -> None:
    """Train the sequence model (checkpoints and exact resume through the trainer's pieces)."""
    from nanoforge.recommender.config import load_rec_config
    from nanoforge.recommender.train import train

    cfg = load_rec_config(config, list(overrides))
    with progress(disable=None if cfg.log.progress else True) as bar:
        task = bar.add_task("train", total=cfg.train.max_iters, info="")
        res = train(
            cfg,
            out_dir,
            resume=resume,
            on_step=lambda s, loss: bar.update(task, completed=s, info=f"loss {loss:.3f}"),
        )
    full = res.get("valid", {}).get("full")
    quality = (
        f"valid full-ranking NDCG@10 {full['NDCG@10']:.4f} HR@10 {full['HR@10']:.4f}"
        if full
        else "no validation cases in this split protocol (run eval for the test split)"
    )
    click.echo(
        f"{out_dir}: {res['step']} steps in {res['train_seconds']:.1f}s, {res['n_items']} item ids; {quality}"
    )


@group.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--split", type=click.Choice(["test", "valid"]), default="test", show_default=True)
@click.option("--negatives", default=100, show_default=True, type=int, help="Sampled negatives per case.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fixed negative set.")
@click.option(
    "--plot", type=click.Path(path_type=Path), default=None, help="Write a reliability diagram PNG."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def eval_cmd(run_dir: Path, split: str, negatives: int, seed: int, plot: Path | None, as_json: bool) -> None:
    """Evaluate the model and the baselines on the run's own split (all protocols, clearly labelled)."""
    from nanoforge.recommender.baselines import BASELINES
    from nanoforge.recommender.config import load_rec_config
    from nanoforge.recommender.evaluate import (
        ModelScorer,
        conversion_metrics,
        conversion_predictions,
        evaluate_ranking,
        sample_negatives,
    )
    from nanoforge.recommender.metrics import plot_reliability
    from nanoforge.recommender.train import load_rec_model, prepare

    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a recommender run directory (no config.yaml)")
    cfg = load_rec_config(run_dir / "config.yaml")
    model, vocab = load_rec_model(run_dir)
    prep = prepare(cfg.data)
    if prep.vocab != vocab:
        raise UserError(f"{run_dir}: the data no longer gives the run's vocabulary; was data.path changed?")
    cases = prep.split.test if split == "test" else prep.split.valid
    neg = sample_negatives(cases, vocab, negatives, seed)
    report: dict[str, object] = {"split": split, "protocol": prep.split.protocol, "negatives": negatives}
    scorers = {"model": ModelScorer(model, vocab)}
    scorers.update({name: build(prep.split.train, vocab) for name, build in BASELINES.items()})
    report["ranking"] = {n: evaluate_ranking(s, cases, vocab, neg) for n, s in scorers.items()}
    held_out = {c.user: [*c.history, c.target] for c in cases}
    y, p = conversion_predictions(model, vocab, held_out, cfg.data.horizon)
    if 0 < y.sum() < len(y):
        report["conversion"] = conversion_metrics(y, p)
        if plot is not None:
            plot_reliability({"model": (y, p)}, plot)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"next-item, {prep.split.protocol} split, {split}: {len(cases)} cases")
    click.echo(f"{'scorer':<12}{'protocol':<16}{'HR@10':>8}{'NDCG@10':>9}{'MRR':>8}")
    for name, res in report["ranking"].items():  # type: ignore[union-attr]
        for proto in ("full", "full_excl_seen", "sampled100"):
            m = res[proto]
            label = proto if proto != "sampled100" else f"sampled{negatives}"
            click.echo(f"{name:<12}{label:<16}{m['HR@10']:>8.4f}{m['NDCG@10']:>9.4f}{m['MRR']:>8.4f}")
    if "conversion" in report:
        c = report["conversion"]
        click.echo(
            f"conversion (purchase within {cfg.data.horizon} events; every position of the evaluated users' "
            f"sequences, whose earlier events were in training): AUC {c['AUC']:.4f} "  # type: ignore[index]
            f"log loss {c['log_loss']:.4f} ECE {c['ECE']:.4f} over {int(c['n'])} positions"  # type: ignore[index]
        )
    else:
        click.echo("conversion: not evaluated (the data has no purchases, or only purchases)")


@group.command("recommend")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run or model dir.")
@click.option("--history", required=True, type=click.Path(path_type=Path), help="Events CSV/JSONL/Parquet.")
@click.option("--user", "users", multiple=True, help="Only these users (repeatable; default all).")
@click.option("-k", "top_k", default=10, show_default=True, type=int, help="Items per user.")
@click.option("--keep-seen", is_flag=True, help="Allow items already in the user's history.")
def recommend_cmd(run_dir: Path, history: Path, users: tuple[str, ...], top_k: int, keep_seen: bool) -> None:
    """Top-k next items (and conversion probability) for each user of an events file, as JSON lines."""
    from nanoforge.recommender.events import read_events, sequences
    from nanoforge.recommender.recommend import recommend

    if top_k <= 0:
        raise UserError(f"-k {top_k} must be a positive number of items")
    from nanoforge.recommender.train import load_rec_model

    model, vocab = load_rec_model(run_dir)
    seqs = sequences(read_events(history))
    wanted = list(users) or list(seqs)
    for u in wanted:
        rec = recommend(model, vocab, seqs.get(u, []), k=top_k, exclude_seen=not keep_seen)
        click.echo(json.dumps({"user": u, **rec}))


@group.command("simulate")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Output .jsonl.")
@click.option("--users", default=50, show_default=True, type=int)
@click.option("--items", default=120, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
def simulate_cmd(out_path: Path, users: int, items: int, seed: int) -> None:
    """Write simulated shop events (see ``nanoforge.recommender.simulator`` for the conversion rule)."""
    from nanoforge.recommender.events import write_jsonl
    from nanoforge.recommender.simulator import SimConfig, simulate

    events, _ = simulate(SimConfig(n_users=users, n_items=items, seed=seed))
    write_jsonl(events, out_path)
    click.echo(f"{out_path}: {len(events)} events, {users} users")
