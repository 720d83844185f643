"""Experiment: softmax vs linear vs Performer vs RetNet vs sliding-window attention, trained on the same data.

    nice -n 5 .venv/bin/python tools/experiments/attention_variants.py --out docs/experiments [--steps 600]

What it does: trains the shipped ``shakespeare-char`` model (4 layers, 4 heads, width 128, block 64, byte
ids, learned positions, nanoGPT's 90/10 contiguous split of ../shared/data/tinyshakespeare/input.txt) once
per attention variant, with everything else identical (seed, data order, optimizer, schedule, steps), via
``nanoforge.trainer.pretrain.run``. It records the train loss every ``log_interval`` steps with the wall
time since the start of training, and the val loss (fixed batches) a few times. Writes
``attention_variants.md`` (table), ``attention_variants.png`` (loss vs steps and vs wall time) and
``attention_variants.json`` (raw curves) into ``--out``. Time is the process's CPU seconds (one torch thread),
which load from other jobs on a shared machine barely changes; wall seconds are recorded too.

Variants (``model.attention`` + options): softmax (``F.scaled_dot_product_attention``), sliding (softmax
with a 16-token window of the 64), linear (elu+1 feature map), performer (FAVOR+, 2 x head_dim random
features), retnet (retention, parallel form). Linformer is left out: its fixed projection of the sequence
axis is not causal, so it cannot be trained as a language model.
What it does not do: tune each variant's learning rate (all use the softmax recipe's), or run long enough
to reach the 1.88 nanoGPT figure (that is ``tools/bench/train.py --shakespeare``).
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

#: variant name -> model overrides on top of the shakespeare-char config.
VARIANTS: dict[str, list[str]] = {
    "softmax": ["model.attention=softmax"],
    "sliding (w=16)": ["model.attention=sliding", "model.sliding_window=16"],
    "linear": ["model.attention=linear"],
    "performer": ["model.attention=performer"],
    "retnet": ["model.attention=retnet"],
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


def train_arm(name: str, overrides: list[str], data: Path, work: Path, a: argparse.Namespace) -> dict:
    """One training run; returns its curves (step, loss, seconds) and its final evaluation."""
    from nanoforge.trainer.config import load_config
    from nanoforge.trainer.pretrain import run

    base = [
        f"data.dir={data}",
        "train.device=cpu",
        f"train.threads={a.threads}",
        f"train.max_iters={a.steps}",
        f"schedule.decay_iters={a.steps}",
        f"schedule.warmup_iters={min(50, a.steps // 4)}",
        f"train.eval_interval={max(1, a.steps // 4)}",
        "train.eval_iters=10",
        "train.log_interval=10",
        f"checkpoint.interval={a.steps}",
        "checkpoint.keep_last=1",
        "log.tensorboard=false",
        "log.progress=false",
    ]
    cfg = load_config("shakespeare-char", base + overrides)
    train: list[tuple[int, float, float, float]] = []
    evals: list[tuple[int, float]] = []
    w0, c0 = time.perf_counter(), time.process_time()

    def on_log(r: dict) -> None:
        if r["kind"] == "train":
            train.append((r["step"], r["loss"], time.perf_counter() - w0, time.process_time() - c0))
        elif r["kind"] == "eval":
            evals.append((r["step"], r["val_loss"]))

    summary = run(cfg, work / name.split()[0], on_log=on_log)
    tokens = cfg.train.max_iters * cfg.train.batch_size * cfg.train.block_size
    row = {
        "variant": name,
        "train": train,
        "evals": evals,
        "val_loss": summary["eval"]["val_loss"],
        "val_bpb": summary["eval"]["val_bpb"],
        "train_loss": summary["eval"]["train_loss"],
        "tokens_per_s": summary["tokens_per_s"],
        "wall_s": summary["wall_s"],
        "cpu_s": train[-1][3],
        "tokens_per_cpu_s": tokens / train[-1][3],
    }
    print(
        f"{name:15s} val loss {row['val_loss']:.4f}  train loss {row['train_loss']:.4f}  "
        f"{row['tokens_per_cpu_s']:,.0f} tok/CPU-s  {row['cpu_s']:.1f} CPU-s  {row['wall_s']:.1f} s wall",
        flush=True,
    )
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in rows:
        steps, losses, _, cpu = zip(*r["train"])
        axes[0].plot(steps, losses, label=r["variant"], lw=1.2)
        axes[1].plot(cpu, losses, label=r["variant"], lw=1.2)
    for ax, xlabel in zip(axes, ("optimizer step", "CPU time since start of training (s, 1 thread)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("train loss (nats / byte)")
        ax.set_ylim(top=3.5)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("loss vs steps", fontsize=10)
    axes[1].set_title("loss vs time (process CPU seconds: robust to other jobs' load)", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def markdown(rows: list[dict], a: argparse.Namespace, cmd: str, load: tuple[float, float]) -> str:
    soft = rows[0]
    lines = [
        "# Experiment: attention variants (softmax, sliding window, linear, Performer, RetNet)",
        "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
        f"{a.threads} torch thread(s), {os.cpu_count()} CPUs shared with other jobs: 1-minute load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end). Time is measured as this process's CPU "
        "seconds (`time.process_time()`, one torch thread), which other jobs on the machine barely change; wall "
        "seconds are given too but mostly measure the load. The loss-vs-step curves are exact and repeatable.",
        "",
        "Setup: the shipped `shakespeare-char` config (4 layers, 4 heads, width 128, block 64, batch 12, byte "
        "ids, learned positions, AdamW lr 1e-3 cosine to 1e-4, clip 1.0) on tinyshakespeare with nanoGPT's "
        f"90/10 split, {a.steps} steps (50 warmup) per variant, identical seed and batches. Only "
        "`model.attention` changes. Val loss: mean over 10 fixed val batches at the end.",
        "",
        "| variant | final val loss | val bits/byte | final train loss | vs softmax (val) | tokens per CPU-s | "
        "train CPU (s) | train wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} | {r['train_loss']:.4f} | "
            f"{r['val_loss'] - soft['val_loss']:+.4f} | {r['tokens_per_cpu_s']:,.0f} | {r['cpu_s']:.1f} | "
            f"{r['wall_s']:.1f} |"
        )
    lines += ["", "Val loss during training (step: loss):", ""]
    for r in rows:
        lines.append(f"- {r['variant']}: " + ", ".join(f"{s}: {v:.3f}" for s, v in r["evals"]))
    lines += ["", "![loss vs steps and CPU time](attention_variants.png)", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "experiments")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per variant")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    a = ap.parse_args()
    if not SHAKESPEARE.is_file():
        raise SystemExit(f"error: {SHAKESPEARE} not found (../shared/data is needed for this experiment)")
    names = [v for v in a.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variants {unknown}; accepted: {', '.join(VARIANTS)}")
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_shakespeare(Path(tmp) / "data")
        for name in names:
            rows.append(train_arm(name, VARIANTS[name], data, Path(tmp), a))
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = "nice -n 5 .venv/bin/python tools/experiments/attention_variants.py " + " ".join(
        f"--{k} {v}" for k, v in (("steps", a.steps), ("threads", a.threads))
    )
    (a.out / "attention_variants.json").write_text(json.dumps(rows, indent=1))
    plot(rows, a.out / "attention_variants.png")
    md = markdown(rows, a, cmd, (load0, os.getloadavg()[0]))
    (a.out / "attention_variants.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
