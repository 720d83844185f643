"""``nanoforge recommender``: train, evaluate, and recommend from the command line.

    nanoforge recommender train --config sim-tiny --out runs/rec [--resume] [train.max_iters=500 ...]
    nanoforge recommender eval --run runs/rec [--split test] [--negatives 100] [--plot reliability.png]
    nanoforge recommender recommend --run runs/rec --history events.jsonl [--user u0001] [-k 10] [--keep-seen]
    nanoforge recommender simulate --out events.jsonl [--users 50]
    nanoforge recommender serve --run runs/rec [--port 50053] [--auth-token-file F] [--inference ADDR]
    nanoforge recommender ads --product "..." --audience people.jsonl --inference ADDR [-n 4] [--json]
    nanoforge recommender ads-train --out adconv/ [--impressions clicks.jsonl] [--n 30000]

What it does: parses options, shows progress, prints tables / JSON lines; bad input becomes one
``error: ...`` line through the umbrella command. What it does not do: any modelling itself.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

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
    from nanoforge.recommender.baselines import BASELINES, Scorer
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
    scorers: dict[str, Scorer] = {"model": ModelScorer(model, vocab)}
    scorers.update({name: build(prep.split.train, vocab) for name, build in BASELINES.items()})
    ranking = {n: evaluate_ranking(s, cases, vocab, neg) for n, s in scorers.items()}
    report["ranking"] = ranking
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
    for name, res in ranking.items():
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


def _read_token(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    token = path.read_text().strip()
    if not token or any(c.isspace() for c in token):
        raise UserError(f"{option} {path}: the file must hold one token without spaces")
    return token


@group.command("serve")
@click.option("--run", "runs", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Run or model dir (repeatable; the first is the default model, named after its dir).")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=50053, show_default=True, help="0: any free port (printed).")
@click.option("--auth-token-file", type=click.Path(path_type=Path), default=None,
              help="File holding the bearer token clients must send (default: no auth).")  # fmt: skip
@click.option("--inference", default=None, help="InferenceService host:port for Explain's generated text.")
@click.option("--inference-token-file", type=click.Path(path_type=Path), default=None,
              help="File holding the InferenceService's bearer token.")  # fmt: skip
@click.option("--tls-cert", default=None, help="PEM certificate (with --tls-key).")
@click.option("--tls-key", default=None, help="PEM private key.")
def serve_cmd(
    runs: tuple[Path, ...], host: str, port: int, auth_token_file: Path | None, inference: str | None,
    inference_token_file: Path | None, tls_cert: str | None, tls_key: str | None,
) -> None:  # fmt: skip
    """Run the RecommenderService until SIGINT/SIGTERM (then drain and stop)."""
    from nanoforge.api.server import wait_for_stop_signal
    from nanoforge.recommender.scoring import ServedModel
    from nanoforge.recommender.service import start_server

    if bool(tls_cert) != bool(tls_key):
        raise UserError("--tls-cert and --tls-key go together; give both or neither")
    token = _read_token(auth_token_file, "--auth-token-file")
    inference_token = _read_token(inference_token_file, "--inference-token-file")
    models = [ServedModel.load(r) for r in runs]

    async def run() -> None:
        running = await start_server(
            models, host=host, port=port, token=token, tls_cert=tls_cert, tls_key=tls_key,
            inference_target=inference, inference_token=inference_token,
        )  # fmt: skip
        names = ", ".join(m.name for m in models)
        click.echo(f"RecommenderService listening on {host}:{running.port} (models: {names})", err=True)
        await wait_for_stop_signal()
        await running.stop(grace=10.0)

    asyncio.run(run())


def _conversion_model(path: Path | None, impressions: Path | None, n: int, seed: int) -> Any:
    from nanoforge.recommender.adconv import AdConversionModel, fit_conversion_model

    if path is not None:
        return AdConversionModel.load(path)
    return fit_conversion_model(impressions, n=n, seed=seed)


def _model_line(meta: dict[str, Any]) -> str:
    m = meta.get("held_out", {})
    rule = f", the rule itself {m['rule_auc']:.3f}" if "rule_auc" in m else ""
    return (
        f"conversion model: trained on {meta.get('n_train', '?')} {meta.get('trained_on', '?')}; "
        f"held-out AUC {m.get('auc', float('nan')):.3f}{rule} over {meta.get('n_held_out', '?')} impressions"
    )


@group.command("ads-train")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--impressions", type=click.Path(path_type=Path), default=None,
              help="Real click logs (JSONL/CSV: headline, body, call_to_action, converted, profile fields). "
                   "Default: simulated impressions.")  # fmt: skip
@click.option("--n", "n", default=30_000, show_default=True, type=int, help="Simulated impressions.")
@click.option("--feature-set", default="copy_x_audience", show_default=True,
              type=click.Choice(["copy_x_audience", "copy_only", "audience_only"]),
              help="copy_x_audience is the model; the other two are ablations.")  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=int)
def ads_train_cmd(out_dir: Path, impressions: Path | None, n: int, feature_set: str, seed: int) -> None:
    """Train the text-aware ad conversion model and print its held-out AUC."""
    from nanoforge.recommender.adconv import fit_conversion_model

    if n <= 0:
        raise UserError(f"--n {n} must be a positive number of impressions")
    model = fit_conversion_model(impressions, n=n, seed=seed, feature_set=feature_set)
    model.save(out_dir)
    click.echo(f"{out_dir}: {_model_line(model.meta)}")


@group.command("ads")
@click.option("--product", required=True, help="What the ad sells (1..500 characters).")
@click.option("--audience", required=True, type=click.Path(path_type=Path),
              help="Viewer profiles, JSONL or CSV (e.g. interest, age, device, price_sensitive).")  # fmt: skip
@click.option("--inference", required=True, help="InferenceService host:port that writes the copy.")
@click.option("--inference-token-file", type=click.Path(path_type=Path), default=None)
@click.option("--text-model", default="", help="Served model name (default: the service's default).")
@click.option("-n", "n", default=4, show_default=True, type=int, help="Ad candidates to generate (1..16).")
@click.option("--conversion-model", type=click.Path(path_type=Path), default=None,
              help="Dir from `ads-train` (default: train one now on simulated impressions).")  # fmt: skip
@click.option("--max-new-tokens", default=200, show_default=True, type=int,
              help="Token budget per ad (>= 100; sets the JSON strings' maximum lengths).")  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ads_cmd(
    product: str, audience: Path, inference: str, inference_token_file: Path | None, text_model: str, n: int,
    conversion_model: Path | None, max_new_tokens: int, seed: int, as_json: bool,
) -> None:  # fmt: skip
    """Generate ad copies, predict each one's conversion for the audience, rank them, explain the best."""
    from nanoforge.recommender.ads import describe, run_studio
    from nanoforge.recommender.adsim import read_audience
    from nanoforge.recommender.textgen import InferenceTextGenerator

    people = read_audience(audience)
    model = _conversion_model(conversion_model, None, 30_000, seed)
    if not as_json:
        click.echo(_model_line(model.meta), err=True)
    gen = InferenceTextGenerator(
        inference, token=_read_token(inference_token_file, "--inference-token-file"), model=text_model
    )
    try:
        res = run_studio(product, people, gen, model, n=n, seed=seed, max_new_tokens=max_new_tokens)
    finally:
        gen.close()
    if as_json:
        click.echo(json.dumps(res.to_dict()))
        return
    click.echo(f"{len(res.candidates)} ads for {res.product!r}, ranked by predicted conversion over "
               f"{res.audience_size} viewers ({len(res.rejected)} samples rejected):")  # fmt: skip
    for c in res.candidates:
        click.echo(f"  #{c.rank}  {c.conversion:.3f}  {c.copy.headline!r} / {c.copy.body!r} / "
                   f"{c.copy.call_to_action!r}")  # fmt: skip
    click.echo("why #1 (logit contributions, averaged over the audience):")
    for f, v in res.top_features:
        click.echo(f"  {v:+.3f}  {describe(f)}")
    click.echo(f"rationale: {res.rationale or '(none: ' + res.rationale_note + ')'}")
