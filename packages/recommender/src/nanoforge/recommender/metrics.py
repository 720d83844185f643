"""Ranking and probability metrics, each a small pure function on numpy arrays.

What it does: ranking metrics from the 0-based RANK of the target among the candidates (0 = top):

    hit_rate@k   mean(rank < k)                              ranks [0, 3, 12], k=10 -> 2/3
    ndcg@k       mean(1 / log2(rank + 2) if rank < k else 0)  one relevant item, so IDCG = 1
    mrr          mean(1 / (rank + 1))                         no cut-off

``target_ranks`` computes ranks with ties counted AGAINST the target (a constant scorer ranks last, not
first). Conversion metrics: ``auc`` (Mann-Whitney, ties count 1/2), ``log_loss``, ``ece`` (equal-width
bins, weighted by bin size), ``reliability`` (the points of a reliability diagram) and
``plot_reliability`` (matplotlib, imported only there).
What it does not do: choose candidates or protocols (``evaluate``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def target_ranks(scores: np.ndarray, target_col: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of ``scores[b, target_col[b]]`` among the valid columns of row b (ties pessimistic).

    Args:
        scores: (B, N) candidate scores.
        target_col: (B,) column of the target in each row.
        valid: (B, N) bool, False = not a candidate (excluded); None = all columns.
    """
    rows = np.arange(len(scores))
    t = scores[rows, target_col][:, None]  # (B, 1)
    better = scores >= t
    better[rows, target_col] = False
    if valid is not None:
        better &= valid
    return better.sum(1)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Fraction of targets ranked in the top ``k``."""
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item per case: ``1 / log2(rank + 2)`` inside the top k, else 0."""
    if not len(ranks):
        return 0.0
    r = ranks.astype(np.float64)
    return float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)))


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank (no cut-off)."""
    return float(np.mean(1.0 / (ranks.astype(np.float64) + 1.0))) if len(ranks) else 0.0


def ranking_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """``{"HR@k", "NDCG@k", "MRR"}`` of an array of ranks."""
    return {f"HR@{k}": hit_rate(ranks, k), f"NDCG@{k}": ndcg(ranks, k), "MRR": mrr(ranks)}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count 1/2.

    Raises:
        ValueError: labels not all 0/1, or only one class present.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("auc labels must be 0 or 1")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auc needs both classes, got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average 1-based ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats; probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def reliability(
    labels: np.ndarray, probs: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of predicted probability: (mean prediction, fraction positive, count).

    Empty bins have count 0 and NaN means. The last bin includes p = 1.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / counts
        frac = np.bincount(idx, weights=y, minlength=n_bins) / counts
    return mean_p, frac, counts


def ece(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (count / N) * |fraction positive - mean prediction|."""
    mean_p, frac, counts = reliability(labels, probs, n_bins)
    keep = counts > 0
    return float(np.sum(counts[keep] / counts.sum() * np.abs(frac[keep] - mean_p[keep])))


def plot_reliability(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, n_bins: int = 10
) -> Path:
    """Draw a reliability diagram (one line per ``name -> (labels, probs)``) to a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    for name, (y, p) in curves.items():
        mean_p, frac, counts = reliability(y, p, n_bins)
        keep = counts > 0
        ax.plot(mean_p[keep], frac[keep], "o-", label=f"{name} (ECE {ece(y, p, n_bins):.3f})")
    ax.set_xlabel("predicted conversion probability")
    ax.set_ylabel("observed conversion rate")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
