"""Item vocabulary, time-gap tokens, tokenization and the no-leakage splits."""

from __future__ import annotations

import pytest

from nanoforge.recommender.events import Event, sequences
from nanoforge.recommender.simulator import SimConfig, simulate
from nanoforge.recommender.splits import leave_last_out, quantile_cutoff, time_cutoff
from nanoforge.recommender.vocab import ItemVocab, gap_bucket, tokenize


def ev(user, t, item, kind="view"):
    return Event(user, float(t), kind, item)


def test_vocab_frequency_cutoff_and_hashed_buckets(tmp_path):
    events = [ev("u", i, it) for i, it in enumerate(["a", "a", "a", "b", "b", "c"])]
    v = ItemVocab.build(events, min_count=2, n_buckets=4)
    assert v.items == ("a", "b")  # most frequent first; "c" is below the cut-off
    assert v.id("a") == 5 and v.id("b") == 6 and v.size == 7  # 0 pad, 1..4 buckets
    assert 1 <= v.id("c") <= 4 and v.id("c") == v.bucket("c")
    assert v.id("never-seen") == v.bucket("never-seen")  # stable CRC32 bucket
    assert ItemVocab.build(events, n_buckets=4).bucket("c") == v.bucket("c")
    assert not v.is_known("c") and v.item(5) == "a"
    with pytest.raises(ValueError, match="id 3 is not a known item"):
        v.item(3)
    v.save(tmp_path / "vocab.json")
    assert ItemVocab.load(tmp_path / "vocab.json") == v
    with pytest.raises(ValueError, match="min_count=0 must be a positive int"):
        ItemVocab.build(events, min_count=0)


def test_gap_buckets_are_log2():
    assert [gap_bucket(s) for s in (0, 1, 3, 60, 3600, 86400)] == [2, 3, 4, 7, 13, 18]
    assert gap_bucket(-5) == 2 and gap_bucket(1e30) == 33


def test_tokenize_aligns_items_types_gaps():
    v = ItemVocab(("a", "b"), n_buckets=2)
    items, types, gaps = tokenize([ev("u", 0, "a"), ev("u", 60, "b", "click")], v)
    assert items.tolist() == [3, 4] and types.tolist() == [1, 2] and gaps.tolist() == [1, 7]


def _keys(events):
    return {(e.user, e.timestamp, e.item, e.event) for e in events}


def test_leave_last_out_never_shows_test_events_in_training():
    events, _ = simulate(SimConfig(n_users=40, seed=3))
    seqs = sequences(events)
    split = leave_last_out(seqs)
    train = _keys(split.train_events())
    assert len(split.test) == 40
    for case in split.test:
        assert (case.user, case.target.timestamp, case.target.item, case.target.event) not in train
        assert all(e.timestamp <= case.target.timestamp for e in case.history)
        assert case.history == seqs[case.user][:-1]
    for case in split.valid:  # the validation target is not in training either
        assert (case.user, case.target.timestamp, case.target.item, case.target.event) not in train
    for user, seq in split.train.items():  # training = strictly before the validation target
        assert len(seq) == len(seqs[user]) - 2


def test_leave_last_out_on_purchases_only():
    seq = [
        ev("u", 1, "a"),
        ev("u", 2, "a", "purchase"),
        ev("u", 3, "b"),
        ev("u", 4, "b", "purchase"),
        ev("u", 5, "c"),
    ]
    split = leave_last_out({"u": seq}, target_types=("purchase",))
    assert split.test[0].target == seq[3] and split.valid[0].target == seq[1]
    assert split.train["u"] == seq[:1]
    with pytest.raises(ValueError, match="target_types"):
        leave_last_out({"u": seq}, target_types=("like",))


def test_time_cutoff_keeps_the_future_out_of_training():
    events, _ = simulate(SimConfig(n_users=40, seed=4))
    seqs = sequences(events)
    cut = quantile_cutoff(seqs, 0.7)
    split = time_cutoff(seqs, cut)
    assert split.test
    assert max(e.timestamp for e in split.train_events()) < cut
    for case in split.test:
        assert case.target.timestamp >= cut and all(e.timestamp < cut for e in case.history)
    # the vocabulary built from training cannot know items that only occur after the cut-off
    vocab = ItemVocab.build(split.train_events())
    late_only = {e.item for e in events if e.timestamp >= cut} - {e.item for e in split.train_events()}
    assert all(not vocab.is_known(it) for it in late_only)
    with pytest.raises(ValueError, match=r"fraction=1.5 must be in \(0, 1\)"):
        quantile_cutoff(seqs, 1.5)
