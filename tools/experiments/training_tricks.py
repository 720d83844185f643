"""Experiment: what each training trick buys — clipping, warmup, weight decay, bf16 autocast, accumulation.

    nice -n 5 .venv/bin/python tools/experiments/training_tricks.py --out docs/experiments [--steps 400]
    .venv/bin/python tools/experiments/training_tricks.py --render-only   # .md + .png from the saved JSON

What it does: trains the shipped ``shakespeare-char`` model (4 layers, 4 heads, width 128, block 64, batch
12, byte ids, nanoGPT's 90/10 split of ../shared/data/tinyshakespeare/input.txt) with
``nanoforge.trainer.pretrain.run`` once per arm; each arm changes one thing against the baseline recipe
(AdamW lr 1e-3, weight decay 0.1 on 2-D weights, 50 warmup steps then cosine to 1e-4, clip 1.0, fp32):

    no clipping        train.grad_clip=0
    no warmup          schedule.warmup_iters=0
    no weight decay    optim.weight_decay=0
    bf16 autocast      train.dtype=bfloat16 (CPU autocast)
    accumulation 2x6   batch 6 x 2 micro-batches = the same 12 sequences per step
    lr 1e-2 ...        a stress test at 10x the learning rate, with and without clipping + warmup

The baseline also runs with ``--seeds - 1`` extra seeds, which measures the seed-to-seed noise that the
other (one-seed) arms are compared with. Records the train loss every 10 steps, val loss (10 fixed
batches) 4 times, tokens/s, and stability figures: the largest rise of the logged train loss over its
running minimum after the warmup, and whether the run stopped on a NaN/inf loss (the recipe's
``NonFiniteLoss``). Writes ``training_tricks.json`` (curves + run metadata), then ``training_tricks.md``
and ``training_tricks.png`` from it; the "What it means" section is generated from the numbers by
``interpret``, so ``--render-only`` reproduces the whole write-up without training.
What it does not do: repeat the non-baseline arms over seeds, or tune anything per arm.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _report import (
    ROOT,
    SHAKESPEARE,
    header,
    load_level,
    prepare_shakespeare,
    render_saved,
    run_meta,
    save_figure,
    save_results,
    seed_note,
    versus,
)

WARMUP = 50
SEED = 1337
NAME = "training_tricks"

#: arm -> config overrides against the baseline.
ARMS: dict[str, list[str]] = {
    "baseline": [],
    "no clipping": ["train.grad_clip=0"],
    "no warmup": ["schedule.warmup_iters=0"],
    "no weight decay": ["optim.weight_decay=0"],
    "bf16 autocast": ["train.dtype=bfloat16"],
    "accumulation 2x6": ["train.batch_size=6", "train.grad_accum=2"],
    "lr 1e-2": ["optim.lr=1e-2", "schedule.min_lr=1e-3"],
    "lr 1e-2 no clip no warmup": [
        "optim.lr=1e-2",
        "schedule.min_lr=1e-3",
        "train.grad_clip=0",
        "schedule.warmup_iters=0",
    ],
}
#: the one-change ablations at the recipe's learning rate.
ABLATIONS = ("no clipping", "no warmup", "no weight decay", "bf16 autocast", "accumulation 2x6")
#: bf16 autocast vs fp32 training speed, from docs/bench/train.md (session 2, tok/CPU-s, 1 thread).
BENCH_BF16 = {"shakespeare (0.8M params)": (11_411, 13_138), "small (4.2M params)": (2_920, 5_563)}


def max_rise(train: list[tuple[int, float, float]], after: int) -> float:
    """Largest ``loss - min(loss so far)`` over logged steps after ``after``: 0 for a monotone curve.

    Example: losses [3.0, 2.0, 2.5, 1.5] (all after the warmup) -> 0.5.
    """
    best, rise = float("inf"), 0.0
    for step, loss, _ in train:
        if step > after:
            rise = max(rise, loss - best)
        best = min(best, loss)
    return rise


def train_arm(
    name: str, overrides: list[str], seed: int, data: Path, work: Path, a: argparse.Namespace
) -> dict:
    """One training run; returns its curves and summary (a NaN/inf stop is recorded, not raised)."""
    from nanoforge.trainer.config import load_config
    from nanoforge.trainer.pretrain import NonFiniteLoss, run

    base = [
        f"data.dir={data}",
        "train.device=cpu",
        f"train.seed={seed}",
        f"train.threads={a.threads}",
        f"train.max_iters={a.steps}",
        f"schedule.decay_iters={a.steps}",
        f"schedule.warmup_iters={WARMUP}",
        f"train.eval_interval={max(1, a.steps // 4)}",
        "train.eval_iters=10",
        "train.log_interval=10",
        f"checkpoint.interval={a.steps}",
        "checkpoint.keep_last=1",
        "log.tensorboard=false",
        "log.progress=false",
    ]
    cfg = load_config("shakespeare-char", base + overrides)
    train: list[tuple[int, float, float]] = []
    evals: list[tuple[int, float]] = []
    t0 = time.perf_counter()

    def on_log(r: dict) -> None:
        if r["kind"] == "train":
            train.append((r["step"], r["loss"], time.perf_counter() - t0))
        elif r["kind"] == "eval":
            evals.append((r["step"], r["val_loss"]))

    stopped = ""
    try:
        summary = run(cfg, work / f"{name.replace(' ', '_')}-{seed}", on_log=on_log)
        tok_s, wall = summary["tokens_per_s"], summary["wall_s"]
    except NonFiniteLoss as e:
        stopped = str(e).split(";")[0]
        wall = time.perf_counter() - t0
        tok_s = (train[-1][0] if train else 0) * cfg.train.batch_size * cfg.train.block_size / wall
    last_eval = evals[-1][1] if evals and evals[-1][0] == a.steps else float("nan")
    row = {
        "arm": name,
        "seed": seed,
        "overrides": overrides,
        "train": train,
        "evals": evals,
        "val_loss": last_eval,
        "final_train_loss": train[-1][1] if train else float("nan"),
        "max_rise": max_rise(train, WARMUP),
        "stopped": stopped,
        "tokens_per_s": tok_s,
        "wall_s": wall,
    }
    print(
        f"{label(row):28s} val {row['val_loss']:.4f}  max rise {row['max_rise']:.3f}  {tok_s:,.0f} tok/s  "
        f"{wall:.1f} s {stopped}",
        flush=True,
    )
    return row


def label(r: dict) -> str:
    """Row name for tables: the arm, plus the seed when it is not the default one."""
    seed = r.get("seed", SEED)
    return r["arm"] if seed == SEED else f"{r['arm']} (seed {seed})"


def phases(steps: int) -> list[tuple[int, int]]:
    """Step ranges the curves are compared over: the warmup, the rest of the first half, the second half."""
    return [(1, WARMUP), (WARMUP + 1, steps // 2), (steps // 2 + 1, steps)]


def paired_diffs(arm: dict, base: dict, steps: int) -> list[float]:
    """Mean of (arm train loss - baseline train loss) over the logged steps of each phase (same batches).

    Example: arm losses {10: 3.0, 60: 2.5}, baseline {10: 3.2, 60: 2.5}, steps 100 -> [-0.2, 0.0, nan].
    """
    b = {s: loss for s, loss, *_ in base["train"]}
    out = []
    for lo, hi in phases(steps):
        d = [loss - b[s] for s, loss, *_ in arm["train"] if lo <= s <= hi and s in b]
        out.append(sum(d) / len(d) if d else float("nan"))
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for r in rows:
        if not r["train"]:
            continue
        steps, losses, *_ = zip(*r["train"])
        if r.get("seed", SEED) != SEED:
            axes[0].plot(steps, losses, label=label(r), lw=0.8, color="grey", ls="--")
            continue
        ax = axes[1] if r["arm"].startswith("lr 1e-2") or r["arm"] == "baseline" else axes[0]
        ax.plot(steps, losses, label=r["arm"], lw=1.1)
        if r["arm"] == "baseline":
            axes[0].plot(steps, losses, label=r["arm"], lw=1.6, color="black", zorder=5)
    axes[0].set_title("ablations at lr 1e-3 (one change each vs baseline)", fontsize=10)
    axes[1].set_title("stress test: lr 1e-2 with and without clipping + warmup", fontsize=10)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("train loss (nats / byte)")
        ax.set_ylim(1.9, 3.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def markdown(meta: dict, rows: list[dict]) -> str:
    """The whole write-up: command and load, setup, results table, curve table, plot, what it means."""
    base = rows[0]
    steps = meta.get("args", {}).get("steps") or base["train"][-1][0]
    lines = [
        "# Experiment: training tricks (clipping, warmup, weight decay, bf16, accumulation)",
        "",
        header(meta) + " Losses are deterministic for a given seed; tokens/s are wall-clock.",
        "",
        "Setup: the shipped `shakespeare-char` config (4 layers, 4 heads, width 128, block 64, batch 12, byte ids) "
        f"on tinyshakespeare (nanoGPT's 90/10 split), {steps} steps, {WARMUP} warmup steps then cosine to lr/10, "
        "AdamW (betas 0.9/0.99, weight decay 0.1 on 2-D weights), clip 1.0, fp32, seed 1337; each arm changes "
        "only what its row says. Val loss: 10 fixed val batches after the last step. 'Max rise': the largest "
        f"increase of the logged train loss (every 10 steps) over its running minimum after step {WARMUP}.",
        "",
        "| arm | final val loss | vs baseline | final train loss | max rise | stopped | tokens/s | wall (s) |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {label(r)} | {r['val_loss']:.4f} | {r['val_loss'] - base['val_loss']:+.4f} | "
            f"{r['final_train_loss']:.4f} | {r['max_rise']:.3f} | {r['stopped'] or 'no'} | "
            f"{r['tokens_per_s']:,.0f} | {r['wall_s']:.1f} |"
        )
    heads = " | ".join(f"steps {lo}-{hi}" for lo, hi in phases(steps))
    lines += [
        "",
        "Train loss minus the baseline's at the same step (same seed, so the same batches), mean over the "
        "logged steps of each phase (negative = ahead of the baseline):",
        "",
        f"| arm | {heads} |",
        "|---|" + "---:|" * len(phases(steps)),
    ]
    for r in rows[1:]:
        if r.get("seed", SEED) == SEED and r["train"]:
            lines.append(
                f"| {r['arm']} | " + " | ".join(f"{d:+.3f}" for d in paired_diffs(r, base, steps)) + " |"
            )
    lines += ["", f"![loss curves]({NAME}.png)", "", "## What it means", "", interpret(meta, rows), ""]
    return "\n".join(lines) + "\n"


def interpret(meta: dict, rows: list[dict]) -> str:
    """The "What it means" bullets, each computed from the rows (nothing here is written before the run)."""
    by = {r["arm"]: r for r in rows if r.get("seed", SEED) == SEED}
    base = by["baseline"]
    b = base["val_loss"]
    steps = meta.get("args", {}).get("steps") or base["train"][-1][0]
    seeds = {r.get("seed", SEED): r["val_loss"] for r in rows if r["arm"] == "baseline"}
    spread, noise = seed_note(seeds, "the baseline")
    tol = spread if spread is not None else 0.0
    busy = load_level(meta) in ("busy", "unknown")
    out = [_ablations(by, b, steps, spread, tol)]
    out += [_stress(by, b, steps, spread, tol)] if "lr 1e-2" in by else []
    speeds = [r["tokens_per_s"] for r in rows if r["arm"] == "baseline"]
    tnoise = max(speeds) / min(speeds) - 1 if len(speeds) > 1 else None
    out += [_bf16(by, busy, meta, tnoise)] if "bf16 autocast" in by else []
    out += [_accumulation(by, busy, meta, tnoise)] if "accumulation 2x6" in by else []
    out += [_max_rise(by)]
    stops = [f"{k} ({r['stopped']})" for k, r in by.items() if r["stopped"]]
    out.append(
        "No arm produced a NaN/inf loss (the recipe would have stopped with `NonFiniteLoss`)."
        if not stops
        else "Stopped on a NaN/inf loss (`NonFiniteLoss`): " + "; ".join(stops) + "."
    )
    out.append(
        f"{noise} Limits: {steps} steps, one seed per arm"
        + (" (the baseline excepted)" if len(seeds) > 1 else "")
        + ", nothing tuned per arm; "
        "it answers what each trick does to this recipe on this small model, not at scale."
    )
    return "\n".join("- " + s for s in out if s)


def _ablations(by: dict, b: float, steps: int, spread: float | None, tol: float) -> str:
    abl = {k: by[k]["val_loss"] - b for k in ABLATIONS if k in by}
    if not abl:
        return ""
    big = [k for k, d in abl.items() if spread is not None and abs(d) > spread]
    clear = [k for k in big if abs(abl[k]) >= 2 * spread]  # type: ignore[operator]
    worst = max(abl, key=lambda k: abs(abl[k]))
    lead = f"**At the recipe's lr (1e-3), over {steps} steps, "
    if spread is None:
        head = (
            f"At the recipe's lr (1e-3), the largest change a single ablation makes to the val loss over "
            f"{steps} steps is {abl[worst]:+.4f} nats ({worst})"
        )
    elif not big:
        head = lead + "no single trick changes the val loss by more than the seed noise**"
    elif not clear:
        head = (
            lead + "no single trick changes the val loss clearly beyond the seed noise** (only "
            f"{', '.join(big)} exceed{'s' if len(big) == 1 else ''} the seed range, by under 2x)"
        )
    else:
        head = (
            lead
            + f"{', '.join(clear)} change{'s' if len(clear) == 1 else ''} the val loss beyond the seed noise**"
        )
    text = (
        head
        + ": "
        + ", ".join(
            f"{k} {d:+.4f}" + (f" ({versus(d, spread)})" if spread is not None else "")
            for k, d in abl.items()
        )
        + f" against the baseline's {b:.4f}."
        + (" With one seed per arm, none of these is known to exceed seed noise." if spread is None else "")
    )
    notes = []
    for k in ABLATIONS:
        if k not in by:
            continue
        early, mid, late = paired_diffs(by[k], by["baseline"], steps)
        first = early if abs(early) >= abs(mid) else mid
        if abs(first) < 0.03:
            continue
        where = "ahead of" if first < 0 else "behind"
        end = "and has rejoined it by the second half" if abs(late) <= max(0.02, tol) else "and stays apart"
        notes.append(
            f"{k} runs {where} the baseline early ({early:+.3f} during the warmup, {mid:+.3f} up to step "
            f"{steps // 2}) {end} ({late:+.3f})"
        )
    if notes:
        text += (
            " The curves say more than the end points (train loss on the same batches): "
            + "; ".join(notes)
            + "."
        )
    if "no clipping" in by and paired_diffs(by["no clipping"], by["baseline"], steps)[1] > 0.03:
        text += (
            " Without clipping the large early gradients take full-size steps; clipping at 1.0 keeps their "
            "direction while bounding their size (the likely reason for the slower middle phase, not isolated "
            "here)."
        )
    return text


def _stress(by: dict, b: float, steps: int, spread: float | None, tol: float) -> str:
    hi = by["lr 1e-2"]
    v = hi["val_loss"]
    best = min(by.values(), key=lambda r: r["val_loss"])
    text = f"At lr 1e-2 with clipping and warmup the run ends at val {v:.4f}, {v - b:+.4f} vs the baseline"
    text += f" ({versus(v - b, spread)})" if spread is not None else ""
    text += (
        ", the best arm of all" if best is hi else f"; the best arm is {best['arm']} ({best['val_loss']:.4f})"
    )
    if v < b - tol:
        text += ": the baseline's lr 1e-3 is conservative for a run this short"
    text += "."
    nc = by.get("lr 1e-2 no clip no warmup")
    if nc is None:
        return text
    n = nc["val_loss"]
    usable = n > v + tol and n > b + tol and v <= b + tol
    lead = (
        "**Clipping + warmup are what make lr 1e-2 usable here.** "
        if usable
        else "**At lr 1e-2, removing clipping + warmup together does not clearly hurt in this run.** "
    )
    win = (WARMUP - 10, 2 * WARMUP)

    def span(r: dict) -> list[float]:
        return [loss for s, loss, *_ in r["train"] if win[0] <= s <= win[1]]

    ns, cs = span(nc), span(hi)
    text = lead + text
    text += f" The same lr without clipping and warmup ends at {n:.4f}, {n - v:+.4f} vs the clipped run"
    if ns and cs:
        text += (
            f"; at steps {win[0]}-{win[1]} its train loss is {min(ns):.2f}-{max(ns):.2f} where the clipped run "
            f"goes from {cs[0]:.2f} to {cs[-1]:.2f}"
        )
        late = paired_diffs(nc, by["baseline"], steps)[2]
        if min(ns) > max(cs):
            text += (
                f": its first full-size, unclipped steps leave it on a higher plateau, and in the second half it "
                f"is still {late:+.3f} from the baseline's train loss on the same batches"
            )
    text += ". Both were removed together, so this run does not say which of the two matters more."
    return text


def timing(ratio: float, tnoise: float | None, meta: dict) -> str:
    """How far a wall-clock speed ratio can be trusted, given the baseline's own spread over seeds."""
    text = f"wall clock, load average {meta.get('load_start', '?')} at the start, {meta.get('load_end', '?')} at the end"
    if tnoise is None:
        return text + "; no repeated run to measure timing noise"
    verdict = "beyond" if abs(ratio - 1) > tnoise else "within"
    return (
        text
        + f"; the baseline's own tokens/s varied by {tnoise:.0%} over its seeds, so this is {verdict} timing noise"
    )


def _bf16(by: dict, busy: bool, meta: dict, tnoise: float | None) -> str:
    r, base = by["bf16 autocast"], by["baseline"]
    bt = {s: loss for s, loss, *_ in base["train"]}
    dev = max((abs(loss - bt[s]) for s, loss, *_ in r["train"] if s in bt), default=float("nan"))
    speed = r["tokens_per_s"] / base["tokens_per_s"]
    text = (
        f"**bf16 autocast** ends at val {r['val_loss']:.4f} vs fp32's {base['val_loss']:.4f} "
        f"({r['val_loss'] - base['val_loss']:+.4f}); its logged train loss never differs from fp32's by more "
        f"than {dev:.3f}" + (" (the curves lie on top of each other)." if dev < 0.01 else ".")
    )
    if busy:
        text += (
            f" Its speed is not measurable from this table: tokens/s here are wall-clock under a load average of "
            f"{meta.get('load_start', '?')} (start) and {meta.get('load_end', '?')} (end) and mostly measure the "
            "other jobs "
            f"(bf16/fp32 ratio {speed:.2f}x in this run)."
        )
    else:
        text += f" In this run it trained at {speed:.2f}x fp32's tokens/s ({timing(speed, tnoise, meta)})."
    bench = ", ".join(f"{b / a:.2f}x at the {k} size" for k, (a, b) in BENCH_BF16.items())
    return text + (
        f" Timed in CPU seconds side by side (`tools/bench/train.py --clock cpu`, docs/bench/train.md, not this "
        f"run), bf16 autocast on this AVX-512-BF16 CPU was {bench}. On a CPU without native bf16 instructions "
        "autocast is usually slower than fp32 (not measured here)."
    )


def _accumulation(by: dict, busy: bool, meta: dict, tnoise: float | None) -> str:
    r, base = by["accumulation 2x6"], by["baseline"]
    bt = {s: loss for s, loss, *_ in base["train"]}
    dev = max((abs(loss - bt[s]) for s, loss, *_ in r["train"] if s in bt), default=float("nan"))
    dv = r["val_loss"] - base["val_loss"]
    if dev < 1e-3:
        text = (
            "**Accumulation 2 x 6 is the same optimisation as one batch of 12**: the logged train loss matches "
            f"the baseline's at every step (largest difference {dev:.1e}; final {r['final_train_loss']:.4f} vs "
            f"{base['final_train_loss']:.4f}), which is what happens when the sampler draws the same 12 windows "
            "in two halves and the summed gradient differs only in float summation order."
        )
    else:
        text = (
            f"Accumulation 2 x 6 differs from one batch of 12 by up to {dev:.3f} in logged train loss (final "
            f"{r['final_train_loss']:.4f} vs {base['final_train_loss']:.4f})."
        )
    text += (
        f" The {dv:+.4f} in val loss comes from evaluation, which draws its 10 batches at `train.batch_size` "
        "windows each (6 here vs 12: different windows), not from training."
        if dev < 1e-3
        else f" Its val loss differs by {dv:+.4f}, partly because evaluation draws its 10 batches at "
        "`train.batch_size` windows each (6 here vs 12: different windows)."
    )
    speed = r["tokens_per_s"] / base["tokens_per_s"]
    return text + (
        " It costs two smaller forward/backward passes per step"
        + (
            f" ({speed:.2f}x the baseline's tokens/s in this run: {timing(speed, tnoise, meta)})."
            if not busy
            else "."
        )
    )


def _max_rise(by: dict) -> str:
    ok = {k: r for k, r in by.items() if not r["stopped"]}
    rises = {k: r["max_rise"] for k, r in ok.items()}
    if not rises:
        return ""
    worst = max(ok, key=lambda k: ok[k]["val_loss"])
    top = max(rises, key=lambda k: rises[k])
    text = (
        f"'Max rise' ranges {min(rises.values()):.3f}-{max(rises.values()):.3f} across the arms (baseline "
        f"{rises['baseline']:.3f})."
    )
    if top != worst:
        text += (
            f" It does not track instability here: the worst arm by val loss ({worst}, {ok[worst]['val_loss']:.3f}) "
            f"has {rises[worst]:.3f}, the highest is {top} ({rises[top]:.3f}). At a 10-step logging interval it measures the "
            "batch-to-batch noise of a single-batch loss; the paired curves and the final losses are the better "
            "stability evidence."
        )
    else:
        text += f" The arm with the highest max rise ({top}) is also the worst by val loss."
    return text


def render(out: Path) -> str:
    """Rewrite the .md and .png in ``out`` from the saved JSON (no training); returns the markdown."""
    return render_saved(out, NAME, ("arm", "baseline"), plot, markdown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "experiments")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps per arm")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset (baseline first)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for the baseline (the noise estimate)")
    ap.add_argument("--render-only", action="store_true", help=f"rewrite {NAME}.md/.png from --out's JSON")
    a = ap.parse_args()
    if a.render_only:
        print(render(a.out))
        return
    if not SHAKESPEARE.is_file():
        raise SystemExit(f"error: {SHAKESPEARE} not found (../shared/data is needed for this experiment)")
    if a.steps <= WARMUP:
        raise SystemExit(f"error: --steps={a.steps} must exceed the {WARMUP} warmup steps")
    if a.seeds < 1:
        raise SystemExit(f"error: --seeds={a.seeds}; accepted: 1 or more")
    names = [n for n in a.arms.split(",") if n]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise SystemExit(f"error: unknown arms {unknown}; accepted: {', '.join(ARMS)}")
    if names[:1] != ["baseline"]:
        raise SystemExit(f"error: --arms must start with baseline (got {names[:1]})")
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_shakespeare(Path(tmp) / "data")
        runs = [(n, SEED) for n in names] + [("baseline", SEED + i) for i in range(1, a.seeds)]
        for name, seed in runs:
            rows.append(train_arm(name, ARMS[name], seed, data, Path(tmp), a))
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = "nice -n 5 .venv/bin/python tools/experiments/training_tricks.py " + " ".join(sys.argv[1:])
    args = {"steps": a.steps, "threads": a.threads, "seeds": a.seeds}
    save_results(a.out / f"{NAME}.json", run_meta(cmd.strip(), args, load0), rows)
    print(render(a.out))


if __name__ == "__main__":
    main()
