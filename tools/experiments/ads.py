"""Experiment: does the ad studio's conversion model learn the simulated rule, and rank ads like the rule does?

    nice -n 5 .venv/bin/python tools/experiments/ads.py --out docs/experiments

What it does: trains the hashed logistic regression of ``nanoforge.recommender.adconv`` on N SIMULATED
impressions (N in ``--sizes``) with three feature sets (copy x audience = the model; audience only and copy
only = ablations) and measures, on 5,000 held-out impressions of NEW ads (another seed):

* impression AUC, next to the AUC of the rule's own probability (the ceiling: labels are Bernoulli draws);
* what the studio actually does, rank ads for an audience: 200 new random ads and two 50-viewer audiences,
  "mixed" (random viewers) and "targeted" (random viewers made price-sensitive sports fans); Spearman
  correlation between the predicted audience conversion rate (mean over viewers) and the rule's, and the
  rule's percentile of the ad the model ranks first (n/a when a model gives every ad the same score).

Writes ``ads.png`` (AUC and Spearman against N) and ``ads.json`` into ``--out`` and prints the Markdown
table that ``docs/experiments/ads.md`` (the write-up) shows.
What it does not do: use a language model (the studio's generation is tested elsewhere) or any real data:
every number here says how well the model learns THIS simulator's rule, nothing about real viewers.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from nanoforge.recommender.adconv import evaluate_conversion_model, train_conversion_model
from nanoforge.recommender.adsim import random_copy, random_profile, rule_probability, simulate_impressions

FEATURE_SETS = ("copy_x_audience", "audience_only", "copy_only")


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (no tie correction: continuous scores)."""
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/experiments"))
    parser.add_argument(
        "--sizes", default="1000,3000,10000,30000", help="Training impressions, comma-separated."
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    held = simulate_impressions(5000, seed=99)
    rng = np.random.default_rng(7)
    ads = [random_copy(rng) for _ in range(200)]
    mixed = [random_profile(rng) for _ in range(50)]
    targeted = [{**random_profile(rng), "interest": "sports", "price_sensitive": True} for _ in range(50)]
    audiences = {"mixed": mixed, "targeted": targeted}
    true_rate = {
        k: np.array([np.mean([rule_probability(a, p) for p in aud]) for a in ads])
        for k, aud in audiences.items()
    }
    rows = []
    t_start = time.process_time()
    for n in sizes:
        train = simulate_impressions(n, seed=0)
        for fs in FEATURE_SETS:
            t0 = time.process_time()
            model = train_conversion_model(train, feature_set=fs)
            row = {"n": n, "features": fs, "train_cpu_s": time.process_time() - t0}
            m = evaluate_conversion_model(model, held, simulated=True)
            row.update(auc=m["auc"], rule_auc=m["rule_auc"])
            for k, aud in audiences.items():
                pred = np.array([model.audience_rate(a, aud) for a in ads])
                if np.ptp(pred) < 1e-9:  # the same score for every ad: no ranking at all
                    row[f"spearman_{k}"], row[f"top_pct_{k}"] = None, None
                    continue
                row[f"spearman_{k}"] = spearman(pred, true_rate[k])
                best = int(np.argmax(pred))
                row[f"top_pct_{k}"] = float((true_rate[k] < true_rate[k][best]).mean() * 100)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    total_cpu = time.process_time() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ads.json").write_text(json.dumps(rows, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for fs in FEATURE_SETS:
        r = [x for x in rows if x["features"] == fs]
        color = f"C{FEATURE_SETS.index(fs)}"  # one colour per feature set in both panels
        ax1.plot([x["n"] for x in r], [x["auc"] for x in r], marker="o", label=fs, color=color)
        if fs != "audience_only":  # it scores every ad the same: no ranking to plot
            for k, style in (("mixed", "-"), ("targeted", ":")):
                ax2.plot([x["n"] for x in r], [x[f"spearman_{k}"] for x in r], marker="o", ls=style,
                         label=f"{fs}, {k} audience", color=color)  # fmt: skip
    ax1.axhline(rows[0]["rule_auc"], color="k", ls="--", label="the rule itself (ceiling)")
    ax1.set(xscale="log", xlabel="training impressions (simulated)", ylabel="held-out AUC (new ads)")
    ax2.axhline(1.0, color="k", ls="--", label="perfect ranking")
    ax2.set(xscale="log", xlabel="training impressions (simulated)",
            ylabel="Spearman: predicted vs rule audience rate")  # fmt: skip
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.suptitle("ad conversion model on the SIMULATOR (held-out: new ads; 200 ads, 50-viewer audiences)")
    fig.tight_layout()
    fig.savefig(args.out / "ads.png", dpi=110)

    lines = ["| training impressions | features | held-out AUC | rule AUC | Spearman mixed | Spearman targeted | "
             "top ad's rule pct mixed / targeted | train CPU s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    for x in rows:
        lines.append(f"| {x['n']} | {x['features']} | {x['auc']:.3f} | {x['rule_auc']:.3f} | "
                     f"{fmt(x['spearman_mixed'], '.3f')} | {fmt(x['spearman_targeted'], '.3f')} | "
                     f"{fmt(x['top_pct_mixed'], '.0f')} / {fmt(x['top_pct_targeted'], '.0f')} | "
                     f"{x['train_cpu_s']:.1f} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    print(f"total CPU {total_cpu:.0f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
