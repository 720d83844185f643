"""MovieLens-100k next-item experiment: our SASRec-style model vs RecBole's SASRec vs count baselines.

    nice -n 5 .venv/bin/python tools/experiments/recommender.py [--budget-s 900] [model.dropout=0.5 ...]

Protocol (the same for every scorer): leave-one-out per user in time order (last rating = test target,
second-to-last = validation target, training = everything before the validation target; our item
vocabulary is built from training events only). Metrics HR@10 / NDCG@10 / MRR, ALL computed by
``nanoforge.recommender.evaluate`` (RecBole's test scores are exported and ranked by the same code), under
three protocols: full ranking over all known items with seen items kept as candidates (RecBole's convention
for sequential models), full ranking with the user's seen items excluded, and 100 negatives sampled
uniformly from unseen items ONCE with seed 0 and shared by every scorer.

Equal budget: our model and RecBole 1.2.1's SASRec train AT THE SAME TIME for ``--budget-s`` seconds of
training each (evaluations excluded), each process pinned to its own core (``--cores``, 1 torch thread),
so both see the same load from whatever else runs on the machine. Both log validation NDCG@10 (full
ranking, seen kept) against training seconds: ours every ``--eval-every`` steps, RecBole every
``--recbole-eval-every-s`` training seconds (``tools/experiments/recbole_runner.py``, run in RecBole's
own venv because RecBole 1.2.1 pins ray<=2.6.3, numpy<2 and pandas<3). RecBole gets the same split: we
write its atomic ``.inter`` file from our sequences with the timestamp replaced by the position in the
user's sequence (so ties in MovieLens timestamps are ordered identically on both sides), under a dataset
name other than ``ml-100k`` (RecBole would silently use its bundled copy).

Setup of the RecBole venv (outside the repository; torch from the same CPU wheel as the main venv), also
printed by ``--setup`` and written on the result page:

    python3.11 -m venv /work/recbole-venv
    /work/recbole-venv/bin/pip install recbole==1.2.1 --no-deps
    /work/recbole-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
        # (the CPU build the main venv uses, never a CUDA build; here: the local +cpu wheel in /opt/wheels)
    /work/recbole-venv/bin/pip install "numpy<2" "pandas<3" scipy scikit-learn tqdm colorlog colorama \\
        tabulate texttable psutil pyyaml tensorboard

Writes docs/experiments/recommender.{md,json,png}. The data is read in place and never copied into the
repository (its licence forbids redistribution); RecBole's copy of it lives in a temporary folder that is
deleted at the end. What it does not do: tune RecBole (it runs with its published SASRec defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nanoforge.recommender.baselines import BASELINES
from nanoforge.recommender.config import RecConfig, load_rec_config
from nanoforge.recommender.evaluate import ModelScorer, evaluate_ranking, sample_negatives
from nanoforge.recommender.events import Event
from nanoforge.recommender.splits import Split
from nanoforge.recommender.train import Prepared, load_rec_model, prepare, train
from nanoforge.recommender.vocab import ItemVocab

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ("full", "full_excl_seen", "sampled100")
SETUP = __doc__.split("written on the result page:\n\n")[1].split("\n\n")[0]
DATASET = "ml100k-loo"  # NOT "ml-100k": RecBole would load its bundled copy instead of this file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "movielens-100k"))
    ap.add_argument("--budget-s", type=float, default=900.0, help="training seconds for EACH model")
    ap.add_argument("--eval-every", type=int, default=100, help="our steps between curve points")
    ap.add_argument("--recbole-python", default="/work/recbole-venv/bin/python", help="'' = skip RecBole")
    ap.add_argument("--recbole-eval-every-s", type=float, default=60.0, help="RecBole curve spacing (s)")
    ap.add_argument("--cores", default="0,1", help="cores for ours,RecBole ('' = no pinning)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "experiments"))
    ap.add_argument("--render-only", action="store_true", help="redraw md/png from the saved JSON")
    ap.add_argument("--setup", action="store_true", help="print the RecBole venv setup commands and exit")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.dropout=0.5")
    args = ap.parse_args()
    out = Path(args.out)
    if args.setup:
        print(SETUP)
        return 0
    if args.render_only:
        render(out)
        return 0
    if args.budget_s <= 0:
        raise SystemExit(f"error: --budget-s={args.budget_s} must be > 0 (seconds)")
    cores = [int(c) for c in args.cores.split(",")] if args.cores else []
    if cores and len(cores) != 2:
        raise SystemExit(f"error: --cores={args.cores!r} must be two core ids 'OURS,RECBOLE' or ''")
    overrides = [
        f"data.path={args.data}",
        f"train.max_seconds={args.budget_s}",
        f"train.eval_interval={args.eval_every}",
        "train.eval_cases=0",
        "train.threads=1",
        "checkpoint.interval=1000000",
        "log.progress=false",
        *args.overrides,
    ]
    cfg = load_rec_config("movielens-100k", overrides)
    if args.recbole_python and not Path(args.recbole_python).is_file():
        raise SystemExit(
            f"error: --recbole-python {args.recbole_python} not found; create the venv:\n{SETUP}\n"
            "or pass --recbole-python '' to skip RecBole"
        )
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    prep = prepare(cfg.data)
    split, vocab = prep.split, prep.vocab
    neg = sample_negatives(split.test, vocab, 100, seed=0)
    print(
        f"{len(split.train)} users, {len(split.test)} test cases, {vocab.size - vocab.first_item_id} known items, "
        f"prepared in {time.perf_counter() - t0:.1f}s; load {load_before}",
        flush=True,
    )
    results: dict[str, dict] = {}
    for name, build in BASELINES.items():
        t1 = time.perf_counter()
        scorer = build(split.train, vocab)
        fit_s = time.perf_counter() - t1
        results[name] = {
            "test": evaluate_ranking(scorer, split.test, vocab, neg),
            "valid": evaluate_ranking(scorer, split.valid, vocab),
            "fit_seconds": fit_s,
        }
        print(name, {p: round(results[name]["test"][p]["NDCG@10"], 4) for p in PROTOS}, flush=True)

    work = Path(tempfile.mkdtemp(prefix="rec-ml100k-"))
    try:
        recbole = None
        if args.recbole_python:
            write_inter(split, work / "data" / DATASET / f"{DATASET}.inter")
            recbole = start_recbole(args, work, cores[1] if cores else None)
        if cores:
            os.sched_setaffinity(0, {cores[0]})
        ours, curve = train_ours(cfg, prep, neg, work / "ours")
        results["model"] = ours
        recbole_curve: list[dict] = []
        if recbole is not None:
            rc = recbole.wait()
            log_tail = (work / "recbole.log").read_text(errors="replace")[-3000:]
            if rc != 0:
                raise SystemExit(f"error: the RecBole run failed (exit {rc}); its log ends with:\n{log_tail}")
            rb, recbole_curve = read_recbole(work / "recbole", split, vocab, neg)
            results.update(rb)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "command": "nice -n 5 .venv/bin/python tools/experiments/recommender.py " + " ".join(sys.argv[1:]),
        "overrides": overrides,
        "model_config": cfg.model,
        "budget_s": args.budget_s,
        "cores": cores,
        "load_before": load_before,
        "load_after": load_after,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
        f"torch {torch.__version__}, 1 thread per model",
        "total_seconds": time.perf_counter() - t0,
        "setup": SETUP,
    }
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": results, "curve": curve, "recbole_curve": recbole_curve}
    _atomic(out / "recommender.json", json.dumps(payload, indent=1).encode())
    render(out)
    print(f"wrote {out}/recommender.{{md,json,png}} in {meta['total_seconds']:.0f}s", flush=True)
    return 0


def train_ours(cfg: RecConfig, prep: Prepared, neg: np.ndarray, run: Path) -> tuple[dict, list[dict]]:
    """Train our model for the budget; at each of train()'s validations also log test NDCG@10 and CPU time.

    The validation NDCG@10 of a curve point is the one train() itself computed and logged to
    ``run/metrics.jsonl`` (not recomputed); the point's CPU seconds exclude the test evaluation done here but
    include train()'s validation pass, which CPU time cannot separate from the training steps.
    """
    split = prep.split
    curve: list[dict] = []
    cpu = {"start": time.process_time(), "eval": 0.0}

    def on_eval(step: int, seconds: float, model, vocab_: ItemVocab) -> None:  # type: ignore[no-untyped-def]
        c0 = time.process_time()
        te = evaluate_ranking(ModelScorer(model, vocab_), split.test, vocab_)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        valid = next(r for r in reversed(records) if r["kind"] == "valid" and r["step"] == step)
        point = {
            "step": step,
            "train_seconds": seconds,
            "train_cpu_seconds": c0 - cpu["start"] - cpu["eval"],
            "valid_full_ndcg10": valid["full_NDCG@10"],
            "test_full_ndcg10": te["full"]["NDCG@10"],
            "test_excl_ndcg10": te["full_excl_seen"]["NDCG@10"],
        }
        curve.append(point)
        cpu["eval"] += time.process_time() - c0
        print("ours", json.dumps(point), flush=True)

    t1 = time.perf_counter()
    res = train(cfg, run, prepared=prep, on_eval=on_eval)
    wall = time.perf_counter() - t1
    model, vocab = load_rec_model(run)
    sc = ModelScorer(model, vocab)
    return {
        "test": evaluate_ranking(sc, split.test, vocab, neg),
        "valid": evaluate_ranking(sc, split.valid, vocab),
        "train_seconds": res["train_seconds"],
        "train_cpu_seconds": curve[-1]["train_cpu_seconds"] if curve else None,
        "steps": res["step"],
        "wall_seconds_incl_evals": wall,
        "parameters": model.num_parameters(),
    }, curve


# ------------------------------------------------------------------------------------------ RecBole side


def full_sequences(split: Split) -> dict[str, list[Event]]:
    """Each user's whole time-ordered sequence, rebuilt from the split (test history + test target)."""
    seqs = {u: list(seq) for u, seq in split.train.items()}
    for c in split.test:
        seqs[c.user] = [*c.history, c.target]
    return seqs


def write_inter(split: Split, path: Path) -> None:
    """RecBole atomic ``.inter`` file; timestamp = position in the user's sequence (our order, ties kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, seq in full_sequences(split).items():
        lines.extend(f"{user}\t{e.item}\t{i}" for i, e in enumerate(seq))
    _atomic(path, ("\n".join(lines) + "\n").encode())


def start_recbole(args: argparse.Namespace, work: Path, core: int | None) -> subprocess.Popen:
    """Start ``recbole_runner.py`` in RecBole's venv, pinned to ``core``, logging to WORK/recbole.log."""
    cmd = [
        args.recbole_python,
        str(Path(__file__).resolve().parent / "recbole_runner.py"),
        f"--data-dir={work / 'data'}",
        f"--dataset={DATASET}",
        f"--budget-s={args.budget_s}",
        f"--eval-every-s={args.recbole_eval_every_s}",
        f"--out={work / 'recbole'}",
        "--threads=1",
    ]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    log = open(work / "recbole.log", "w")  # noqa: SIM115  (the child owns it until it exits)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


class ExportedScorer:
    """RecBole's exported test scores as a ``Scorer`` over our vocabulary (rows by user, columns by item)."""

    def __init__(self, scores: np.ndarray, users: list[str], items: list[str], vocab: ItemVocab) -> None:
        if scores.shape != (len(users), len(items)):
            raise ValueError(f"scores {scores.shape} do not match {len(users)} users x {len(items)} items")
        self.row = {u: i for i, u in enumerate(users)}
        col = {t: j for j, t in enumerate(items)}
        self.vocab = vocab
        ids = np.arange(vocab.first_item_id, vocab.size)
        # our id -> RecBole column; every item known to us is in RecBole's file (it reads the same events)
        self.cols = np.array([col[vocab.item(int(i))] for i in ids])
        self.scores = scores

    def __call__(self, histories: list[list[Event]]) -> np.ndarray:
        out = np.full((len(histories), self.vocab.size), -np.inf)
        rows = [self.row[h[-1].user] for h in histories]
        out[:, self.vocab.first_item_id :] = self.scores[np.ix_(rows, self.cols)]
        return out


def read_recbole(
    rdir: Path, split: Split, vocab: ItemVocab, neg: np.ndarray
) -> tuple[dict[str, dict], list[dict]]:
    """RecBole's timings and its test scores ranked by OUR metric code (last and best-validation state)."""
    res = json.loads((rdir / "recbole_result.json").read_text())
    curve = [json.loads(line) for line in (rdir / "recbole_curve.jsonl").read_text().splitlines() if line]
    tokens = json.loads((rdir / "tokens.json").read_text())
    out = {}
    for tag in ("last", "best"):
        scores = np.load(rdir / f"scores_{tag}.npy", allow_pickle=False)
        sc = ExportedScorer(scores, tokens["users"], tokens["items"], vocab)
        out[f"recbole_{tag}"] = {
            "test": evaluate_ranking(sc, split.test, vocab, neg),
            "recbole_own_test": res[f"recbole_test_{tag}"],
            **{k: v for k, v in res.items() if not k.startswith("recbole_test")},
        }
    return out, curve


# ------------------------------------------------------------------------------------------ report


def convergence(curve: list[dict], key: str = "valid_full_ndcg10") -> tuple[float | None, bool]:
    """(training seconds of the best validation point, converged): converged = the last third of the points
    raised the best validation NDCG@10 by less than 2% over the best of the first two thirds."""
    vals = [p[key] for p in curve]
    if len(vals) < 3:
        return (curve[-1]["train_seconds"] if curve else None), False
    best = curve[max(range(len(vals)), key=vals.__getitem__)]["train_seconds"]
    head, tail = vals[: len(vals) * 2 // 3], vals[len(vals) * 2 // 3 :]
    return best, max(tail) <= 1.02 * max(head)


def render(out: Path) -> None:
    """(Re)draw recommender.png and recommender.md from recommender.json."""
    payload = json.loads((out / "recommender.json").read_text())
    _plot(payload, out / "recommender.png")
    _atomic(out / "recommender.md", _markdown(payload).encode())


def _plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve, rcurve, results = payload["curve"], payload["recbole_curve"], payload["results"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, x, xlabel in (
        (axes[0], "train_seconds", "training wall-clock (s), 1 pinned core each, run concurrently"),
        (axes[1], "train_cpu_seconds", "training CPU time (s) of the process"),
    ):
        ax.plot([p[x] for p in curve], [p["valid_full_ndcg10"] for p in curve], "o-", ms=3, label="ours")
        if rcurve:
            ax.plot(
                [p[x] for p in rcurve],
                [p["valid_ndcg10"] for p in rcurve],
                "s-",
                ms=3,
                label="RecBole SASRec",
            )
        for name, style in {"popular": ":", "item_knn": "-.", "transition": "--"}.items():
            v = results[name]["valid"]["full"]["NDCG@10"]
            ax.axhline(v, color="gray", ls=style, lw=1, label=f"{name} {v:.3f}")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].axvline(payload["meta"]["budget_s"], color="k", lw=0.8, label="budget")
    axes[0].set_ylabel("validation NDCG@10 (full ranking, seen kept)")
    axes[0].legend(fontsize=7)
    fig.suptitle("MovieLens-100k leave-one-out: equal training budget", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


LABELS = {
    "model": "ours (SASRec-style)",
    "recbole_last": "RecBole SASRec, state at budget end",
    "recbole_best": "RecBole SASRec, best-validation state",
    "popular": "most-popular",
    "item_knn": "item-kNN",
    "transition": "last-item transition",
}


def _markdown(payload: dict) -> str:
    meta, results, curve, rcurve = (
        payload["meta"],
        payload["results"],
        payload["curve"],
        payload["recbole_curve"],
    )
    la, lb = meta["load_before"], meta["load_after"]
    lines = [
        "# Experiment: sequential recommendation on MovieLens-100k, ours vs RecBole's SASRec",
        "",
        f"Command: `{meta['command']}` (total {meta['total_seconds']:.0f} s on {meta['machine']}). "
        f"Load average (1/5/15 min) {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} at the start and "
        f"{lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} at the end: the 2-core machine was shared with other jobs, "
        "which is why both trainings ran at the same time, each pinned to its own core "
        f"(cores {meta['cores']}), under the same budget of {meta['budget_s']:.0f} s of training each.",
        "The data is read from `../shared/data/movielens-100k` and never copied into the repository "
        "(GroupLens licence: no redistribution). RecBole ran in its own venv, created with:",
        "",
        "```",
        SETUP,
        "```",
        "",
        "## Protocol",
        "",
        "- Every rating is an implicit interaction; per user in time order, the last one is the test target, "
        "the second-to-last the validation target; training uses everything before the validation target. "
        "The test history includes the validation item (SASRec / RecBole convention). RecBole reads the same "
        "sequences (its `.inter` timestamp is the position in our time order, so ties are ordered alike) and "
        "splits them with `LS: valid_and_test`, `order: TO`.",
        "- Every number in the results table comes from OUR metric code: RecBole's test scores are exported "
        "and ranked by `nanoforge.recommender.evaluate` exactly like ours. Candidates are the items in our "
        "training vocabulary; a test target never seen in training counts as a miss.",
        "- `full`: rank of the target among ALL known items; items the user has already seen stay candidates "
        "(RecBole's full ranking for sequential models does the same). `excl. seen`: the user's seen items "
        "are removed. `sampled100`: target + 100 negatives sampled uniformly from items the user never "
        "rated, drawn once with seed 0 and shared by every scorer. Ties count against the target; MRR has "
        "no cut-off.",
        "- RecBole: SASRec with RecBole 1.2.1's defaults (2 layers, 2 heads, hidden 64, dropout 0.5/0.5, "
        "max length 50, CE loss, Adam lr 1e-3, batch 2048), seed 2020. Ours: the shipped `movielens-100k` "
        f"config with overrides `{' '.join(o for o in meta['overrides'] if not o.startswith('data.path'))}`.",
        "",
        "## Results (test, 943 users)",
        "",
        "| scorer | HR@10 full | NDCG@10 full | MRR full | HR@10 excl. seen | NDCG@10 excl. seen | "
        "HR@10 sampled100 | NDCG@10 sampled100 | train s (CPU s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in LABELS.items():
        if name not in results:
            continue
        r = results[name]
        f, x, s = r["test"]["full"], r["test"]["full_excl_seen"], r["test"]["sampled100"]
        if "train_seconds" in r:
            cost = f"{r['train_seconds']:.0f} ({r['train_cpu_seconds']:.0f})"
        else:
            cost = f"fit {r['fit_seconds']:.1f}"
        lines.append(
            f"| {label} | {f['HR@10']:.4f} | {f['NDCG@10']:.4f} | {f['MRR']:.4f} | {x['HR@10']:.4f} | "
            f"{x['NDCG@10']:.4f} | {s['HR@10']:.4f} | {s['NDCG@10']:.4f} | {cost} |"
        )
    m = results["model"]
    unknown = int(m["test"]["counts"]["n_unknown_targets"])
    best_s, converged = convergence(curve)
    lines += [
        "",
        f"Ours: {m['parameters']:,} parameters, model config {json.dumps(meta['model_config'])}, "
        f"{m['steps']} steps in {m['train_seconds']:.0f} s of training ({m['wall_seconds_incl_evals']:.0f} s "
        f"including the curve's evaluations"
        + (
            "; it stopped at `train.max_iters`, the end of its cosine schedule, before the budget ran out"
            if m["train_seconds"] < meta["budget_s"]
            else ""
        )
        + f"); validation NDCG@10 (full) at the end "
        f"{m['valid']['full']['NDCG@10']:.4f}; best validation point at {best_s:.0f} s of training. "
        f"Converged (the last third of the curve raised the best validation NDCG@10 by less than 2%): "
        f"**{converged}**. Test targets absent from the training vocabulary (misses for every scorer): "
        f"{unknown}.",
    ]
    if "recbole_last" in results:
        r = results["recbole_last"]
        per_epoch = r["train_seconds"] / max(1, r["batches"]) * r["batches_per_epoch"]
        own, ours_on = r["recbole_own_test"], r["test"]["full"]
        _, rconv = convergence(rcurve, "valid_ndcg10")
        lines += [
            "",
            f"RecBole: {r['parameters']:,} parameters, {r['n_train_sequences']:,} training sequences (every "
            f"prefix of every training sequence), {r['batches_per_epoch']} batches per epoch; "
            f"{r['batches']} batches = {r['batches'] / r['batches_per_epoch']:.2f} epochs in "
            f"{r['train_seconds']:.0f} s of training ({r['train_cpu_seconds']:.0f} CPU s), i.e. "
            f"**{per_epoch:.0f} s per epoch** under this load "
            f"(completed epochs: {', '.join(f'{e:.0f} s' for e in r['epoch_seconds']) or 'none'}); "
            f"setup (data loading and augmentation) {r['setup_seconds']:.0f} s, not counted. Best validation "
            f"at batch {r['best_valid_batch']}. Validation curve converged by the same rule: **{rconv}**.",
            f"- Cross-check of the metric code on RecBole's state at budget end: RecBole's own evaluator says "
            f"HR@10 {own['hit@10']:.4f}, NDCG@10 {own['ndcg@10']:.4f}; our code on the exported scores says "
            f"HR@10 {ours_on['HR@10']:.4f}, NDCG@10 {ours_on['NDCG@10']:.4f} (RecBole ranks over all "
            "1,682 items, ours over the items of the training vocabulary, and RecBole rounds to 4 places).",
        ]
    lines += ["", "![NDCG@10 vs training time](recommender.png)", "", "## Reading", ""]
    lines += _reading(results, curve, converged)
    lines += [
        "",
        "## Curves (validation NDCG@10, full ranking, seen kept)",
        "",
        "Ours (test columns for information; the model is chosen on nothing, the last state is reported):",
        "",
        "| step | train s | train CPU s | valid NDCG@10 | test NDCG@10 full | test NDCG@10 excl. seen |",
        "|---|---|---|---|---|---|",
    ]
    for p in curve:
        lines.append(
            f"| {p['step']} | {p['train_seconds']:.0f} | {p['train_cpu_seconds']:.0f} | "
            f"{p['valid_full_ndcg10']:.4f} | {p['test_full_ndcg10']:.4f} | {p['test_excl_ndcg10']:.4f} |"
        )
    if rcurve:
        lines += [
            "",
            "RecBole (its own evaluator):",
            "",
            "| epoch | batch | train s | train CPU s | valid NDCG@10 |",
        ]
        lines.append("|---|---|---|---|---|")
        for p in rcurve:
            lines.append(
                f"| {p['epoch']} | {p['batches']} | {p['train_seconds']:.0f} | {p['train_cpu_seconds']:.0f} | "
                f"{p['valid_ndcg10']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def _reading(results: dict, curve: list[dict], converged: bool) -> list[str]:
    m = results["model"]["test"]
    out = []
    if "recbole_last" in results:
        rb = results["recbole_last"]["test"]
        for proto, label in (("full", "full ranking, seen kept"), ("full_excl_seen", "seen excluded")):
            a, b = m[proto]["NDCG@10"], rb[proto]["NDCG@10"]
            verdict = "above" if a > b else "NOT above"
            out.append(
                f"- Test NDCG@10 ({label}) at the equal budget: ours {a:.4f}, RecBole {b:.4f} "
                f"({a / b - 1:+.0%}): ours is {verdict} RecBole's."
            )
    if "recbole_last" in results:
        r, o = results["recbole_last"], results["model"]
        ours_full = o["test"]["full"]["NDCG@10"]
        epoch_cpu = r["train_cpu_seconds"] / max(1, r["batches"]) * r["batches_per_epoch"]
        out.append(
            f"- Why: in the same wall-clock budget ours got {o['train_cpu_seconds']:.0f} CPU s of training "
            f"and RecBole {r['train_cpu_seconds']:.0f} CPU s (right panel of the plot), but one RecBole "
            f"epoch costs about {epoch_cpu:.0f} CPU s (every prefix of every sequence is a training example, "
            f"batches of 2048 x 50), so RecBole finished {r['batches'] / r['batches_per_epoch']:.2f} epochs "
            f"while ours ran {o['steps']} steps (batch 64 windows of 50, a loss at every position). This is a "
            "compute-efficiency result at this budget and load, not a quality ceiling: issue 8 measured RecBole "
            "SASRec at test NDCG@10 0.066 (full ranking, seen kept) after 7 epochs (about 23 minutes on a less "
            f"loaded machine, not reproduced here): {'above' if ours_full < 0.066 else 'not above'} ours "
            f"({ours_full:.4f}) at the end of this budget."
        )
    base = ("popular", "item_knn", "transition")
    for proto in PROTOS:
        b = max(base, key=lambda n: results[n]["test"][proto]["NDCG@10"])
        a, t = m[proto]["NDCG@10"], results[b]["test"][proto]["NDCG@10"]
        out.append(f"- `{proto}`: ours {a:.4f} vs best count baseline `{b}` {t:.4f} ({a / t - 1:+.0%}).")
    tail = [p["test_full_ndcg10"] for p in curve[len(curve) * 2 // 3 :]]
    if tail:
        out.append(
            f"- Noise: over the last third of our run the test NDCG@10 (full) moved between {min(tail):.4f} "
            f"and {max(tail):.4f} from one evaluation to the next; with 943 test cases, differences below "
            "about 0.01 are within run-to-run noise."
        )
    out.append(
        "- Our model is "
        + ("converged" if converged else "NOT converged by the 2% rule")
        + " within the budget. Seconds are wall-clock on a shared CPU: compare the two models of this run, "
        "not numbers across runs."
    )
    return out


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
