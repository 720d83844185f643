"""The write-up of ``lora_vs_full.py``: its Markdown report, plot and JSON, and the "What it means" bullets,
all computed from the run's results (nothing here is written before the run). It reads no data and trains
nothing; ``lora_vs_full.py`` passes in the numbers that need the TREC files (majority share, label prior).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

CONTROL = "frozen-rows-r16"  # LoRA r=16 without trainable token rows: where LoRA stood before
LABEL_ROWS = "label-rows-r16"  # LoRA r=16 training the special tokens' rows and the label tokens' rows


def selection_key(r: dict) -> tuple[float, float]:
    """The model-selection rule, shared by the run and its write-up: higher validation accuracy wins, lower
    validation loss breaks ties (the test set plays no part)."""
    return (r["val_accuracy"], -r["val_loss"])


def write_report(
    out: Path, results: list[dict], sweep: list[dict], chosen: dict[str, float], a: argparse.Namespace,
    base_cost: dict, reused: bool, total_s: float, breakdown: dict, val_major: float, prior: float,
) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if v is not None}
    (out / "lora_vs_full.json").write_text(
        json.dumps(
            {
                "results": results,
                "sweep": sweep,
                "chosen": chosen,
                "base_cost": base_cost,
                "reused_base": reused,
                "total_s": total_s,
                "breakdown": breakdown,
                "args": args,
            },
            indent=1,
            default=str,
        )
    )
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    tuned = [r for r in results if r["variant"] != "prompting"]
    ax1.bar([r["variant"] for r in results], [100 * r["accuracy"] for r in results], color="tab:blue")
    ax1.axhline(100 * 138 / 500, ls="--", color="gray", label="majority class (DESC)")
    ax1.set_ylabel("TREC test accuracy (%)")
    ax1.tick_params(axis="x", labelrotation=35)
    ax1.legend()
    for g in chosen:
        pts = sorted((s["lr"], 100 * s["val_accuracy"]) for s in sweep if s["group"] == g)
        ax2.plot(*zip(*pts, strict=True), "o-", label=f"{g} (chose {chosen[g]:g})")
    ax2.axhline(100 * val_major, ls="--", color="gray", label="majority class")
    ax2.set_xscale("log")
    ax2.set_xlabel("learning rate")
    ax2.set_ylabel("validation accuracy (%)")
    ax2.set_title(f"selection sweep ({a.val_n} held-out train questions)", fontsize=10)
    ax2.legend(fontsize=7)
    ax3.scatter([r["trainable"] for r in tuned], [100 * r["accuracy"] for r in tuned])
    for r in tuned:
        ax3.annotate(r["variant"], (r["trainable"], 100 * r["accuracy"]))
    ax3.set_xscale("log")
    ax3.set_xlabel("trainable parameters")
    ax3.set_ylabel("accuracy (%)")
    fig.tight_layout()
    fig.savefig(out / "lora_vs_full.png", dpi=110)
    load = getattr(a, "load_note", None) or f"{os.getloadavg()[0]:.1f} at the end"
    load += " (other jobs shared the 2 cores: tokens/s and wall times are noisy)"
    parts = list(next(iter(breakdown.values()))) if breakdown else []
    bd_rows = ["| variant | " + " | ".join(parts) + " |", "|---|" + "---:|" * len(parts)]
    bd_rows += [f"| {k} | " + " | ".join(f"{v[p]:.3f}" for p in parts) + " |" for k, v in breakdown.items()]
    selected = {id(r) for r in sweep if r.get("selected")}
    train_cpu = (
        base_cost["cpu_s"]
        + base_cost.get("short", {}).get("cpu_s", 0.0)
        + sum(r.get("train_cpu_s", 0.0) for r in [*sweep, *(r for r in results if r.get("selected") is None)])
    )
    sweep_rows = [
        "| method | lr | steps | val accuracy | most chosen (val) | val loss | train CPU-s | chosen |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    sweep_rows += [
        f"| {s['group']} | {s['lr']:g} | {s['steps']} | {100 * s['val_accuracy']:.1f}% | "
        f"{top_answer(s, 'val_answers', a.val_n)} | {s['val_loss']:.3f} | {s['train_cpu_s']:.0f} | "
        f"{'**yes**' if id(s) in selected else ''} |"
        for s in sweep
    ]
    rows = [
        "| variant | lr | steps | trainable params | peak RSS (MB) | train state (MB) | train tok/s | train s "
        "| train CPU-s | val loss | val accuracy | test accuracy | most chosen label (test) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r["variant"] == "prompting":
            rows.append(
                f"| prompting (6-shot, base model; {r['n_test']} test questions) | – | – | 0 | "
                f"{r['peak_rss_mb']:.0f} | – | – | – | – | – | – | {100 * r['accuracy']:.1f}% | – |"
            )
            continue
        rows.append(
            f"| {r['variant']} | {r['lr']:g} | {r['steps']} | {r['trainable']:,} | {r['peak_rss_mb']:.0f} | "
            f"{r['train_state_mb']:.2f} | {r['tokens_per_s']:,.0f} | {r['train_s']:.0f} | {r['train_cpu_s']:.0f} | "
            f"{r['val_loss']:.3f} | {100 * r['val_accuracy']:.1f}% | {100 * r['accuracy']:.1f}% | {top_answer(r)} |"
        )
    cmd = (
        f"python tools/experiments/lora_vs_full.py --pretrain-steps {a.pretrain_steps} --short-base-steps "
        f"{a.short_base_steps} --base-threads {a.base_threads} --full-steps "
        f"{a.full_steps} --lora-steps {a.lora_steps} --full-lrs {a.full_lrs} --lora-lrs {a.lora_lrs} "
        f"--val-n {a.val_n} --long-factor {a.long_factor} "
        f"--threads {a.threads} --jobs {a.jobs} --eval-n {a.eval_n} --prompt-n {a.prompt_n}"
        + (f" --trainable-tokens {a.trainable_tokens}" if a.trainable_tokens != "special" else "")
        + (f" --control-rank {a.control_rank}" if a.control_rank != 16 else "")
        + (" --reuse-base" if reused else "")
    )
    base_note = (
        "the base was REUSED from an earlier run (pretraining took "
        f"{base_cost['wall_s']:.0f} s then; add it to the total)"
        if reused
        else f"tokenizer + pretraining the base took {base_cost['wall_s']:.0f} s ({base_cost['cpu_s']:.0f} CPU-s)"
    )
    (out / "lora_vs_full.md").write_text(
        "# LoRA vs full fine-tuning vs prompting (TREC question classification)\n\n"
        f"Command: `{cmd}` — total {total_s / 60:.1f} min on this machine (2 CPU cores; {base_note}); "
        f"the training alone (pretraining, sweep, variants) used {train_cpu:,.0f} CPU-seconds, i.e. about "
        f"{train_cpu / 120:.0f} min of 2 idle cores before evaluation and process start-up. "
        f"Load average: {load}.\n\n"
        "Base: a 4-layer, width-128 GPT with a 1,024-id BPE tokenizer, pretrained for "
        f"{a.pretrain_steps} steps (batch 16 x 128 tokens) on tinyshakespeare + the (unlabelled) TREC train "
        f"questions: validation loss {base_val(base_cost)}"
        + (
            f"; `short-base-*` (diagnostics) fine-tune a base pretrained for only {a.short_base_steps} steps "
            f"(validation loss {base_val(base_cost['short'])}) with the recipe and lr chosen on the main base"
            if "short" in base_cost
            else ""
        )
        + ". Each variant then "
        "trains (batch 16 x 128 packed tokens, loss on the assistant's label tokens only) on the 5,452 labelled "
        f"train questions minus {a.val_n} seeded ones held out for model selection (the validation accuracy), "
        "rendered as ChatML chats (5% of the rest held out by the trainer for the validation loss); accuracy is on "
        f"{tuned[0]['n_test']} of the 500 TREC-10 test questions (a seeded subset when fewer), choosing the most likely of the six labels. LoRA (via peft) adapts q/k/v/o/up/down "
        "projections, alpha = 2r, no dropout, and trains the embedding rows of the chat special tokens "
        f"(`lora.trainable_tokens={a.trainable_tokens}`); `{CONTROL}` is LoRA r=16 with those rows frozen "
        f"(`lora.trainable_tokens=none`: plain LoRA, the setup of the earlier run), and `{LABEL_ROWS}` (a diagnostic) "
        "also trains the rows of the tokens the six labels are spelled with; both use the lr chosen for "
        f"r={a.control_rank}. `long-full` and `long-r<R>` (diagnostics) are full FT and the best-validation LoRA "
        f"rank at their chosen lrs with {a.long_factor}x the steps. Only the selected runs and the diagnostics are scored on the test set.\n\n"
        "## Model selection (validation split, test set untouched)\n\n"
        "Every method trains once per lr at its final step count; the run with the highest validation accuracy "
        "(the test metric's scoring, on the held-out train questions) becomes the variant, lower validation "
        "loss breaking ties. Each method has its own lr list (`--full-lrs`, `--lora-lrs`).\n\n"
        + "\n".join(sweep_rows)
        + "\n\n"
        "## Variants\n\n"
        + "\n".join(rows)
        + "\n\n![accuracy, lr sweep and trainable parameters](lora_vs_full.png)\n\n"
        "Train state = fp32 weights + gradients and AdamW moments of the trainable parameters (what the optimizer "
        "holds); peak RSS is the whole process (Python, torch, data) and is dominated by the runtime at this size. "
        "Train CPU-s is the CPU time of the fine-tune (user + system) — the training cost that "
        "`prompting_vs_finetuning.md` prices.\n\n"
        "## Where the loss sits\n\n"
        "Mean negative log-likelihood (nats) of each part of the gold answer, 100 test questions (diagnosis only; "
        "nothing is chosen with it):\n\n" + "\n".join(bd_rows) + "\n\n"
        f"Reference: knowing only the train label frequencies gives {prior:.3f} nats on the first label "
        f"token of these questions (a uniform guess over the six labels: {math.log(6):.3f}).\n\n"
        "## What it means\n\n"
        + interpret(results, sweep, chosen, a.val_n, val_major)
        + floor_note(breakdown, results, prior)
        + "\n"
    )


def diff_noise(p1: float, p2: float, n: int) -> float:
    """95% half-width of the difference of two accuracies measured on ``n`` questions each (normal
    approximation, treating the runs as independent: a paired test on the same questions is tighter)."""
    return 1.96 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(n, 1))


def base_val(cost: dict) -> str:
    """``"3.793 nats/token, 2.235 bits/byte"``: a base's pretraining validation figures."""
    ev = cost.get("val_loss") or {}
    return (
        f"{ev.get('val_loss', float('nan')):.3f} nats/token, {ev.get('val_bpb', float('nan')):.3f} bits/byte"
    )


def top_answer(r: dict, key: str = "answers", n: int | None = None) -> str:
    """``"DESC 100%"``: the label a variant chose most often (on the test set, or the split of ``key``) and its
    share (of ``n`` questions, default the test size)."""
    if not r.get(key):
        return "–"
    label, count = max(r[key].items(), key=lambda kv: kv[1])
    return f"{label} {count / (n or r['n_test']):.0%}"


def top_share(r: dict, key: str = "answers") -> float:
    """Share of the questions (test, or the split of ``key``) given the most chosen label."""
    counts = r.get(key) or {"-": 0}
    return max(counts.values()) / max(sum(counts.values()), 1)


def floor_note(breakdown: dict[str, dict[str, float]], results: list[dict], prior: float) -> str:
    """Bullets on where LoRA's loss sits: with vs without trainable token rows, and any rank-independent floor."""
    by = {r["variant"]: r for r in results}
    loras = {k: v for k, v in breakdown.items() if k.startswith("lora")}
    if "full" not in breakdown or not loras:
        return ""
    full = breakdown["full"]
    out = []
    rows = next((by[k]["token_rows"] for k in loras if by[k].get("token_rows")), [])
    if rows and CONTROL in breakdown:
        ctl, c = breakdown[CONTROL], by[CONTROL]
        same = by.get(f"lora-r{c['rank']}")
        parts = []
        for p in full:
            lo, hi = min(v[p] for v in loras.values()), max(v[p] for v in loras.values())
            verb = "drops" if hi < ctl[p] - 0.1 else "rises" if lo > ctl[p] + 0.1 else "stays"
            parts.append(
                f"{p} {verb}: {lo:.3f}-{hi:.3f} with the rows training (r {', '.join(k[6:] for k in loras)}) vs "
                f"{ctl[p]:.3f} with them frozen ({CONTROL}) and {full[p]:.3f} for full FT"
            )
        noise = diff_noise(same["accuracy"], c["accuracy"], c["n_test"]) if same else 0.0
        acc = (
            f" Accuracy at the same rank: {same['variant']} {100 * same['accuracy']:.1f}% vs {CONTROL} "
            f"{100 * c['accuracy']:.1f}% ({100 * (same['accuracy'] - c['accuracy']):+.1f} points; on "
            f"{c['n_test']} questions a difference must exceed about +/-{100 * noise:.1f} points to stand out from "
            "sampling noise at 95%)."
            if same
            else ""
        )
        out.append(
            f"\n- Trainable token rows: the LoRA variants also train the embedding rows of the {len(rows)} special "
            f"tokens that occur in the chats (ids {', '.join(map(str, rows))}; a tied LM head reads the same rows). "
            f"Per-token loss: " + "; ".join(parts) + "." + acc
        )
        eot = "end of turn"
        if eot in ctl and max(v[eot] for v in loras.values()) < ctl[eot] - 0.5 and same:
            collapsed = same["accuracy"] > c["accuracy"] + 0.02 and top_share(same) >= 0.9
            helped = same["accuracy"] > c["accuracy"] + noise and not collapsed
            out.append(
                f"\n- So the untrained special-token rows were the end-of-turn floor ({ctl[eot]:.2f} -> "
                f"{max(v[eot] for v in loras.values()):.3f} nats), "
                + (
                    "and training them also lifts accuracy beyond sampling noise."
                    if helped
                    else (
                        f"and {same['variant']}'s {100 * (same['accuracy'] - c['accuracy']):+.1f} points over "
                        f"{CONTROL} come from answering one label ({top_answer(same)}), not from telling the "
                        "classes apart; the rows are "
                        if collapsed
                        else "but the accuracy difference is within sampling noise, and the rows are "
                    )
                    + "not what holds LoRA's accuracy back: the first label token, the one that carries "
                    f"the class, stays at {min(v['first label token'] for v in loras.values()):.2f}-"
                    f"{max(v['first label token'] for v in loras.values()):.2f} nats with or without them. Accuracy "
                    "sums the label's tokens and the end of turn, so a per-label difference in the old end-of-turn "
                    "loss also moved the frozen-rows scores"
                    + (
                        "; most chosen test labels with it gone: "
                        + ", ".join(f"{k} {top_answer(by[k])}" for k in loras)
                        + "."
                        if any(k in by and by[k].get("answers") for k in loras)
                        else "."
                    )
                )
            )
        if LABEL_ROWS in breakdown:
            lr_, lb = by[LABEL_ROWS], breakdown[LABEL_ROWS]
            first = "first label token"
            near = abs(lb[first] - full[first]) < 0.15
            out.append(
                f"\n- Diagnostic {LABEL_ROWS} (r={c['rank']}, also the rows of the "
                f"{len(lr_['token_rows']) - len(rows)} tokens the labels are spelled with): "
                + ", ".join(f"{p} {lb[p]:.3f}" for p in lb)
                + f" nats; accuracy {100 * lr_['accuracy']:.1f}% (most chosen label: {top_answer(lr_)})"
                + (
                    f". Its first-label-token loss is near full FT's ({full[first]:.3f}) and both are near the "
                    f"{prior:.3f} nats of knowing only the label frequencies, yet accuracy is "
                    f"{100 * lr_['accuracy']:.1f}% vs {100 * by['full']['accuracy']:.1f}%: on this task that loss "
                    "mostly measures the label prior, so the validation loss cannot rank the variants; what LoRA "
                    "misses here is which question gets which label, not the label tokens' rows."
                    if near
                    and abs(full[first] - prior) < 0.3
                    and lr_["accuracy"] < by["full"]["accuracy"] - 0.05
                    else "."
                )
            )
    stuck = [
        p
        for p in full
        if len(loras) > 1
        and max(v[p] for v in loras.values()) - min(v[p] for v in loras.values()) < 0.02
        and min(v[p] for v in loras.values()) > full[p] + 0.5
    ]
    if stuck:
        vals = "; ".join(
            f"{p}: {min(v[p] for v in loras.values()):.2f}-{max(v[p] for v in loras.values()):.2f} for every "
            f"rank vs {full[p]:.3f} for full FT"
            for p in stuck
        )
        out.append(
            f"\n- A floor that does not depend on the rank: the loss on the {' and '.join(stuck)} ends at the same "
            f"value whatever r ({vals}), so more rank does not help there; it points at weights that stay frozen "
            "under LoRA"
            + (" (the final norm, the other embedding rows)." if rows else " (norms, embedding rows).")
        )
    return "".join(out)


def interpret(
    results: list[dict], sweep: list[dict], chosen: dict[str, float], val_n: int, val_major: float
) -> str:
    """Statements computed from the numbers (nothing here is written before the run)."""
    by = {r["variant"]: r for r in results}
    majority = 138 / 500  # DESC share of the test set
    p, f = by["prompting"]["accuracy"], by["full"]["accuracy"]
    loras = {k: v for k, v in by.items() if k.startswith("lora")}
    best = max(loras, key=lambda k: selection_key(loras[k]))
    lo = loras[best]
    gap = lo["accuracy"] - f
    groups = {g: [s for s in sweep if s["group"] == g] for g in chosen}
    by_loss = {g: min(v, key=lambda s: s["val_loss"])["lr"] for g, v in groups.items()}
    differ = [g for g in chosen if by_loss[g] != chosen[g]]
    lora_lrs = [chosen[g] for g in chosen if g != "full"]
    lines = [
        f"- Prompting the base model (6 shots): {100 * p:.1f}% on {by['prompting']['n_test']} questions (majority class: "
        f"{100 * majority:.1f}%). Fine-tuning on {5452 - val_n:,} labelled questions: full FT {100 * f:.1f}%, best LoRA "
        f"by validation accuracy ({best}) {100 * lo['accuracy']:.1f}%. The full prompting study (zero/few-shot, CoT, intervals, "
        "calibration, cost) is `prompting_vs_finetuning.md`.",
        "- Selection (validation accuracy, " + f"{val_n} held-out train questions; majority class there "
        f"{100 * val_major:.1f}%): "
        + "; ".join(
            f"{g} {min(100 * s['val_accuracy'] for s in v):.1f}-{max(100 * s['val_accuracy'] for s in v):.1f}% "
            f"over lr {min(s['lr'] for s in v):g}-{max(s['lr'] for s in v):g}, chose {chosen[g]:g}"
            + (
                " (the top of its range: a wider sweep might go higher)"
                if chosen[g] == max(s["lr"] for s in v) and len(v) > 1
                else " (the bottom of its range: a wider sweep might go lower)"
                if chosen[g] == min(s["lr"] for s in v) and len(v) > 1
                else ""
            )
            for g, v in groups.items()
        )
        + (
            f". The chosen LoRA lrs are {min(lora_lrs) / by['full']['lr']:.0f}-"
            f"{max(lora_lrs) / by['full']['lr']:.0f}x the chosen full-FT lr."
            if lora_lrs
            else "."
        ),
        "- Accuracy vs loss as the criterion: "
        + (
            "the lowest validation loss would have picked a different lr for "
            + ", ".join(f"{g} ({by_loss[g]:g} instead of {chosen[g]:g})" for g in differ)
            + "; the two criteria disagree on this task."
            if differ
            else "the lowest validation loss picks the same lr as the highest validation accuracy for every "
            "method here, so the criterion alone does not explain the gap."
        ),
        "- One-label runs (>= 95% of the validation questions get the same label): "
        + (
            "; ".join(
                f"{g} at lr " + ", ".join(f"{s['lr']:g} ({top_answer(s, 'val_answers', val_n)})" for s in bad)
                for g, v in groups.items()
                if (bad := [s for s in v if top_share(s, "val_answers") >= 0.95])
            )
            or "none"
        )
        + (
            ". Where every lr of a sweep answers one label, no lr taught that method to tell the classes apart "
            "and the validation loss tie-break made the pick: " + ", ".join(tied) + "."
            if (tied := [g for g, v in groups.items() if all(top_share(s, "val_answers") >= 0.95 for s in v)])
            else "."
        ),
        "- Tuned LoRA vs full FT: "
        + ", ".join(
            f"{k} {100 * v['accuracy']:.1f}% ({v['trainable'] / by['full']['trainable']:.1%} of the "
            f"parameters)"
            for k, v in loras.items()
        )
        + f" vs full {100 * f:.1f}%; best LoRA is {100 * gap:+.1f} points from full FT, with "
        f"{lo['steps']} vs {by['full']['steps']} steps and {lo['train_cpu_s']:.0f} vs "
        f"{by['full']['train_cpu_s']:.0f} CPU-s of training.",
        f"- Memory: the optimizer-side training state drops from {by['full']['train_state_mb']:.1f} MB (full) to "
        f"{by.get('lora-r8', lo)['train_state_mb']:.1f} MB (r=8), but peak RSS ({by['full']['peak_rss_mb']:.0f} vs "
        f"{by.get('lora-r8', lo)['peak_rss_mb']:.0f} MB) is dominated by the runtime at this size, and LoRA's "
        "processes also import peft/transformers. The saving matters once weights are gigabytes.",
        f"- Speed (training tokens/s, evaluation excluded): full {by['full']['tokens_per_s']:,.0f}, "
        + ", ".join(f"{k} {v['tokens_per_s']:,.0f}" for k, v in loras.items())
        + ". LoRA skips the frozen weights' gradients but adds two small matmuls per adapted layer; the "
        "processes ran side by side on shared CPU cores, so these figures are noisy.",
        "- Validation vs test: the selected runs score "
        + ", ".join(
            f"{k} {100 * v['val_accuracy']:.1f}/{100 * v['accuracy']:.1f}%"
            for k, v in by.items()
            if v.get("selected")
        )
        + " "
        "(validation/test); the selection cost is every sweep run's training (in the CPU-second total above), "
        "not only the winner's.",
    ]
    lines += long_lines(by)
    lines += short_base_lines(by)
    return "\n".join(lines)


def long_lines(by: dict[str, dict]) -> list[str]:
    """The steps diagnostic: each ``long-*`` run vs the same method at its selected step count, and long LoRA
    vs long full FT when both ran."""
    out = []
    longs = {k: v for k, v in by.items() if k.startswith("long-")}
    for k, long in longs.items():
        same = by.get("full" if k == "long-full" else f"lora-r{long['rank']}")
        if not same:
            continue
        d = long["val_accuracy"] - same["val_accuracy"]
        what = "full FT" if k == "long-full" else "LoRA"
        out.append(
            f"- Diagnostic {k} (not selected): {long['steps']} instead of {same['steps']} steps at the same lr "
            f"{long['lr']:g}: validation {100 * same['val_accuracy']:.1f}% -> {100 * long['val_accuracy']:.1f}%, test "
            f"{100 * same['accuracy']:.1f}% -> {100 * long['accuracy']:.1f}% (most chosen: {top_answer(long)}); "
            + (
                f"on validation, longer training helps {what}: the step budget holds it back here."
                if d > 0.03
                else f"on validation, more steps do not help {what} much (or hurt): its step budget is not what "
                "limits it."
            )
        )
    full = longs.get("long-full")
    lora = next((v for k, v in longs.items() if k != "long-full"), None)
    if full and lora:
        ahead = lora["val_accuracy"] - full["val_accuracy"]
        out.append(
            f"- At the longer budget: {lora['variant']} {100 * lora['val_accuracy']:.1f}% vs long-full "
            f"{100 * full['val_accuracy']:.1f}% validation ({100 * lora['accuracy']:.1f}% vs "
            f"{100 * full['accuracy']:.1f}% test), with {lora['trainable'] / full['trainable']:.1%} of the "
            "parameters training; "
            + (
                "LoRA catches up with full FT once both train longer: at the selected budget the gap is about "
                "steps, not capacity."
                if ahead > -0.03
                else "LoRA stays behind full FT at the longer budget too."
            )
        )
    return out


def short_base_lines(by: dict[str, dict]) -> list[str]:
    """The base-length diagnostic: each recipe on the short base vs the same recipe on the main base."""
    pairs = [(k, k.removeprefix("short-base-")) for k in by if k.startswith("short-base-")]
    pairs = [(s, "full" if m == "full" else f"lora-{m}") for s, m in pairs]
    pairs = [(s, m) for s, m in pairs if m in by]
    if not pairs:
        return []
    drops = {m: by[m]["accuracy"] - by[s]["accuracy"] for s, m in pairs}
    text = "; ".join(
        f"{m} {100 * by[s]['accuracy']:.1f}% -> {100 * by[m]['accuracy']:.1f}% test "
        f"({100 * by[s]['val_accuracy']:.1f}% -> {100 * by[m]['val_accuracy']:.1f}% validation, most chosen on "
        f"the short base: {top_answer(by[s])})"
        for s, m in pairs
    )
    loras = [m for m in drops if m != "full"]
    verdict = ""
    if "full" in drops and loras:
        gain_lora, gain_full = drops[loras[0]], drops["full"]
        verdict = (
            f" LoRA gains {100 * gain_lora:+.1f} points from the longer pretraining, full FT {100 * gain_full:+.1f}: "
            + (
                "a LoRA update can only steer what the base already computes, so LoRA leans on pretraining "
                "more than full FT, which can rebuild the features itself; the LoRA-vs-full gap here is partly a "
                "statement about how little this base was pretrained."
                if gain_lora > gain_full + 0.05
                else "the base's pretraining length moves both alike here."
            )
        )
    return [f"- Base length (diagnostic, short base vs main base, same recipe and lr): {text}.{verdict}"]
