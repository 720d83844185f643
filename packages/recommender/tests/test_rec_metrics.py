"""Metric functions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nanoforge.recommender.metrics import (
    auc,
    ece,
    hit_rate,
    log_loss,
    mrr,
    ndcg,
    plot_reliability,
    reliability,
    target_ranks,
)


def test_ranking_metrics_by_hand():
    ranks = np.array([0, 3, 12])
    assert hit_rate(ranks, 10) == pytest.approx(2 / 3)
    # NDCG@10: (1/log2(2) + 1/log2(5) + 0) / 3 = (1 + 0.43068) / 3
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert mrr(ranks) == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)
    assert hit_rate(np.array([10]), 10) == 0.0 and ndcg(np.array([10]), 10) == 0.0


def test_target_ranks_ties_count_against_the_target_and_masks_exclude():
    scores = np.array([[0.1, 0.5, 0.3, 0.5], [1.0, 1.0, 1.0, 1.0]])
    # row 0: target col 2 (0.3): two scores are higher -> rank 2; row 1: all tied -> rank 3 (worst)
    assert target_ranks(scores, np.array([2, 0])).tolist() == [2, 3]
    valid = np.array([[True, False, True, True], [True, True, True, True]])
    assert target_ranks(scores, np.array([2, 0]), valid).tolist() == [1, 3]


def test_auc_by_hand_with_ties():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.4, 0.4])
    # pairs (pos, neg): (0.9,0.1)=1 (0.9,0.4)=1 (0.4,0.1)=1 (0.4,0.4)=0.5 -> 3.5 / 4
    assert auc(y, s) == pytest.approx(0.875)
    assert auc(np.array([0, 1]), np.array([0.2, 0.8])) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array([1, 1]), np.array([0.2, 0.8]))


def test_log_loss_and_ece_by_hand():
    y = np.array([1, 0])
    p = np.array([0.8, 0.4])
    assert log_loss(y, p) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # 10 bins: 0.8 -> bin 8 (frac 1, mean .8, gap .2), 0.4 -> bin 4 (frac 0, mean .4, gap .4): (0.2 + 0.4) / 2
    assert ece(y, p) == pytest.approx(0.3)
    mean_p, frac, counts = reliability(np.array([1, 0, 1]), np.array([0.15, 0.12, 1.0]), n_bins=10)
    assert counts[1] == 2 and counts[9] == 1 and frac[1] == 0.5 and mean_p[1] == pytest.approx(0.135)
    assert ece(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.0)


def test_reliability_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200)
    y = (rng.uniform(size=200) < p).astype(int)
    out = plot_reliability({"model": (y, p)}, tmp_path / "rel.png")
    assert out.stat().st_size > 1000
