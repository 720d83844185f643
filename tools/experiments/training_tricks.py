"""Experiment: what each training trick buys — clipping, warmup, weight decay, bf16 autocast, accumulation.

    nice -n 5 .venv/bin/python tools/experiments/training_tricks.py --out docs/experiments [--steps 500]

What it does: trains the shipped ``shakespeare-char`` model (4 layers, 4 heads, width 128, block 64, batch
12, byte ids, nanoGPT's 90/10 split of ../shared/data/tinyshakespeare/input.txt) with
``nanoforge.trainer.pretrain.run`` once per arm; each arm changes one thing against the baseline recipe
(AdamW lr 1e-3, weight decay 0.1 on 2-D weights, 50 warmup steps then cosine to 1e-4, clip 1.0, fp32):

    no clipping        train.grad_clip=0
    no warmup          schedule.warmup_iters=0
    no weight decay    optim.weight_decay=0
    bf16 autocast      train.dtype=bfloat16 (CPU autocast: slower here, see the write-up)
    accumulation 2x6   batch 6 x 2 micro-batches = the same 12 sequences per step
    lr 1e-2 ...        a stress test at 10x the learning rate, with and without clipping + warmup

Records the train loss every 10 steps, val loss (10 fixed batches) 4 times, tokens/s, and stability
figures: the largest rise of the logged train loss over its running minimum after the warmup, and whether
the run stopped on a NaN/inf loss (the recipe's ``NonFiniteLoss``). Writes ``training_tricks.md``,
``training_tricks.png`` and ``training_tricks.json`` into ``--out``.
What it does not do: repeat arms over seeds (one seed each: differences under ~0.02 nats are within
seed noise for runs this short) or tune anything per arm.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
WARMUP = 50

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


def prepare_shakespeare(out: Path) -> Path:
    """Byte ids of tinyshakespeare with nanoGPT's split (first 90% train, last 10% val) in ``out``."""
    from nanoforge.trainer.prepare import byte_tokenizer, write_arrays

    ids = np.frombuffer(SHAKESPEARE.read_bytes(), dtype=np.uint8).astype(np.uint16)
    n = int(len(ids) * 0.9)
    write_arrays(
        out,
        {"train": ids[:n], "val": ids[n:]},
        byte_tokenizer(),
        {"train": n, "val": len(ids) - n},
        [str(SHAKESPEARE)],
    )
    return out


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


def train_arm(name: str, overrides: list[str], data: Path, work: Path, a: argparse.Namespace) -> dict:
    """One training run; returns its curves and summary (a NaN/inf stop is recorded, not raised)."""
    from nanoforge.trainer.config import load_config
    from nanoforge.trainer.pretrain import NonFiniteLoss, run

    base = [
        f"data.dir={data}",
        "train.device=cpu",
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
        summary = run(cfg, work / name.replace(" ", "_").replace(",", ""), on_log=on_log)
        tok_s, wall = summary["tokens_per_s"], summary["wall_s"]
    except NonFiniteLoss as e:
        stopped = str(e).split(";")[0]
        wall = time.perf_counter() - t0
        tok_s = (train[-1][0] if train else 0) * cfg.train.batch_size * cfg.train.block_size / wall
    last_eval = evals[-1][1] if evals and evals[-1][0] == a.steps else float("nan")
    row = {
        "arm": name,
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
        f"{name:28s} val {row['val_loss']:.4f}  max rise {row['max_rise']:.3f}  {tok_s:,.0f} tok/s  "
        f"{wall:.1f} s {stopped}",
        flush=True,
    )
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for r in rows:
        if not r["train"]:
            continue
        steps, losses, _ = zip(*r["train"])
        ax = axes[1] if r["arm"].startswith("lr 1e-2") or r["arm"] == "baseline" else axes[0]
        ax.plot(steps, losses, label=r["arm"], lw=1.1)
        if r["arm"] == "baseline":
            axes[0].plot(steps, losses, label=r["arm"], lw=1.6, color="black")
    axes[0].set_title("ablations at lr 1e-3 (one change each vs baseline)", fontsize=10)
    axes[1].set_title("stress test: lr 1e-2 with and without clipping + warmup", fontsize=10)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("train loss (nats / byte)")
        ax.set_ylim(1.9, 3.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def markdown(rows: list[dict], a: argparse.Namespace, cmd: str, load: tuple[float, float]) -> str:
    base = rows[0]
    lines = [
        "# Experiment: training tricks (clipping, warmup, weight decay, bf16, accumulation)",
        "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
        f"{a.threads} torch thread(s), {os.cpu_count()} CPUs shared with other jobs: 1-minute load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end, so tokens/s are indicative; losses are "
        "deterministic).",
        "",
        "Setup: the shipped `shakespeare-char` config (4 layers, 4 heads, width 128, block 64, batch 12, byte ids) "
        f"on tinyshakespeare (nanoGPT's 90/10 split), {a.steps} steps, {WARMUP} warmup steps then cosine to lr/10, "
        "AdamW (betas 0.9/0.99, weight decay 0.1 on 2-D weights), clip 1.0, fp32, seed 1337; each arm changes "
        "only what its row says. Val loss: 10 fixed val batches after the last step. 'Max rise': the largest "
        f"increase of the logged train loss (every 10 steps) over its running minimum after step {WARMUP}.",
        "",
        "| arm | final val loss | vs baseline | final train loss | max rise | stopped | tokens/s | wall (s) |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['val_loss']:.4f} | {r['val_loss'] - base['val_loss']:+.4f} | "
            f"{r['final_train_loss']:.4f} | {r['max_rise']:.3f} | {r['stopped'] or 'no'} | "
            f"{r['tokens_per_s']:,.0f} | {r['wall_s']:.1f} |"
        )
    lines += ["", "![loss curves](training_tricks.png)", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "experiments")
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps per arm")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset (baseline first)")
    a = ap.parse_args()
    if not SHAKESPEARE.is_file():
        raise SystemExit(f"error: {SHAKESPEARE} not found (../shared/data is needed for this experiment)")
    if a.steps <= WARMUP:
        raise SystemExit(f"error: --steps={a.steps} must exceed the {WARMUP} warmup steps")
    names = [n for n in a.arms.split(",") if n]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise SystemExit(f"error: unknown arms {unknown}; accepted: {', '.join(ARMS)}")
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_shakespeare(Path(tmp) / "data")
        for name in names:
            rows.append(train_arm(name, ARMS[name], data, Path(tmp), a))
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = f"nice -n 5 .venv/bin/python tools/experiments/training_tricks.py --steps {a.steps} --threads {a.threads}"
    (a.out / "training_tricks.json").write_text(json.dumps(rows, indent=1))
    plot(rows, a.out / "training_tricks.png")
    md = markdown(rows, a, cmd, (load0, os.getloadavg()[0]))
    (a.out / "training_tricks.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
