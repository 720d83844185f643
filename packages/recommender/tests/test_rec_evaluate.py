"""Evaluation protocols with a hand-made scorer, the fixed negative set and the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from nanoforge.recommender.baselines import BASELINES, ItemKNN, Popular, Transition
from nanoforge.recommender.evaluate import evaluate_ranking, sample_negatives
from nanoforge.recommender.events import Event
from nanoforge.recommender.splits import Case
from nanoforge.recommender.vocab import ItemVocab

ITEMS = tuple(f"i{k}" for k in range(6))  # ids 3..8 (2 buckets)


def e(item, t=0.0):
    return Event("u", t, "view", item)


class Fixed:
    """Scores item id j with ``order[j]`` for every history."""

    def __init__(self, order):
        self.order = np.asarray(order, dtype=float)

    def __call__(self, histories):
        return np.tile(self.order, (len(histories), 1))


def test_protocols_by_hand():
    vocab = ItemVocab(ITEMS, n_buckets=2)
    # scores by id:  pad  b1  b2   i0   i1   i2   i3   i4   i5
    scorer = Fixed([9, 9, 9, 0.6, 0.9, 0.8, 0.1, 0.2, 0.3])
    cases = [Case("u", [e("i1"), e("i2")], e("i0")), Case("v", [e("i0")], e("i5"))]
    negs = np.array([[6, 7], [6, 4]])  # ids: case 0 -> i3, i4; case 1 -> i3, i1
    res = evaluate_ranking(scorer, cases, vocab, negs, k=2)
    # full: case 0 target i0 (0.6) below i1, i2 -> rank 2; case 1 target i5 (0.3) below i0 i1 i2 -> rank 3
    assert res["full"] == pytest.approx({"HR@2": 0.0, "NDCG@2": 0.0, "MRR": (1 / 3 + 1 / 4) / 2})
    # excl. seen: case 0 drops i1, i2 -> rank 0; case 1 drops i0 -> rank 2
    assert res["full_excl_seen"] == pytest.approx({"HR@2": 0.5, "NDCG@2": 0.5, "MRR": (1 + 1 / 3) / 2})
    # sampled: case 0 target 0.6 vs {0.1, 0.2} -> 0; case 1 target 0.3 vs {0.1, 0.9} -> 1
    assert res["sampled100"] == pytest.approx(
        {"HR@2": 1.0, "NDCG@2": (1 + 1 / np.log2(3)) / 2, "MRR": (1 + 1 / 2) / 2}
    )
    assert res["counts"] == {"n_cases": 2.0, "n_unknown_targets": 0.0}


def test_unknown_target_is_a_miss_everywhere():
    vocab = ItemVocab(ITEMS, n_buckets=2)
    case = Case("u", [e("i1")], e("brand-new"))
    res = evaluate_ranking(Fixed(np.arange(9)), [case], vocab, np.array([[3, 4]]), k=1)
    assert res["counts"]["n_unknown_targets"] == 1.0
    # last place: rank 6 of 6 known items, rank 2 among target + 2 negatives
    assert res["full"]["MRR"] == pytest.approx(1 / 7) and res["full_excl_seen"]["MRR"] == pytest.approx(1 / 7)
    assert res["sampled100"]["MRR"] == pytest.approx(1 / 3)
    assert all(res[p]["HR@1"] == 0.0 for p in ("full", "full_excl_seen", "sampled100"))


def test_negatives_are_fixed_by_seed_and_never_seen():
    vocab = ItemVocab(tuple(f"i{k}" for k in range(50)), n_buckets=2)
    cases = [Case("u", [e("i1"), e("i2")], e("i3")), Case("v", [e("i4")], e("i5"))]
    a, b = sample_negatives(cases, vocab, 10, seed=7), sample_negatives(cases, vocab, 10, seed=7)
    assert np.array_equal(a, b) and not np.array_equal(a, sample_negatives(cases, vocab, 10, seed=8))
    assert not set(a[0]) & {vocab.id("i1"), vocab.id("i2"), vocab.id("i3")}
    assert all(len(set(r)) == 10 for r in a) and a.min() >= vocab.first_item_id
    with pytest.raises(ValueError, match="only 47 eligible negatives, need 100"):
        sample_negatives(cases, vocab, 100)


def test_baselines_by_hand():
    vocab = ItemVocab(("a", "b", "c", "d"), n_buckets=1)  # ids a=2 b=3 c=4 d=5
    train = {
        "u1": [e("a", 0), e("b", 1)],
        "u2": [e("a", 0), e("b", 1), e("c", 2)],
        "u3": [e("d", 0), e("c", 1)],
    }
    pop = Popular(train, vocab)([[e("a")]])[0]
    assert pop[2:].tolist() == [2, 2, 2, 1]
    knn = ItemKNN(train, vocab)([[e("a")]])[0]
    # users of a = {u1,u2}; b = {u1,u2}: cos 1; c = {u2,u3}: 1/2; d = {u3}: 0
    assert knn[2:] == pytest.approx([0, 1, 0.5, 0])
    tr = Transition(train, vocab)([[e("a")], [e("b")]])
    assert np.argmax(tr[0]) == vocab.id("b") and np.argmax(tr[1]) == vocab.id("c")
    assert set(BASELINES) == {"popular", "item_knn", "transition"}
