"""Event readers, per-user sequences and the MovieLens loaders."""

from __future__ import annotations

import json

import pytest

from nanoforge.recommender.events import Event, event_type_id, read_events, sequences, write_jsonl
from nanoforge.recommender.movielens import load_movielens


def test_csv_jsonl_parquet_read_the_same_events(tmp_path):
    rows = [
        {"user": "a", "timestamp": 10, "event": "click", "item": "x", "page": "home"},
        {"user": "a", "timestamp": 5, "event": "view", "item": "x", "page": "home"},
        {"user": "b", "timestamp": 7, "event": "purchase", "item": "y", "page": "cart"},
    ]
    csv_path = tmp_path / "e.csv"
    csv_path.write_text(
        "user,timestamp,event,item,page\n"
        + "".join(f"{r['user']},{r['timestamp']},{r['event']},{r['item']},{r['page']}\n" for r in rows)
    )
    jsonl_path = tmp_path / "e.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd = pytest.importorskip("pandas")
    pq_path = tmp_path / "e.parquet"
    pd.DataFrame(rows).to_parquet(pq_path)
    got = [read_events(p) for p in (csv_path, jsonl_path, pq_path)]
    assert got[0] == got[1] == got[2]
    assert got[0][0] == Event("a", 10.0, "click", "x")
    assert got[0][0].context == {"page": "home"}


def test_sequences_are_time_ordered_per_user():
    ev = [
        Event("a", 3, "view", "z"),
        Event("b", 1, "view", "q"),
        Event("a", 1, "view", "x"),
        Event("a", 2, "click", "x"),
    ]
    seqs = sequences(ev)
    assert list(seqs) == ["a", "b"]
    assert [e.timestamp for e in seqs["a"]] == [1, 2, 3]


def test_bad_records_give_one_clear_error(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"user": "a", "timestamp": 1, "event": "like", "item": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: unknown event type 'like'; accepted: view, click"):
        read_events(p)
    p.write_text(json.dumps({"user": "a", "timestamp": "soon", "item": "x"}) + "\n")
    with pytest.raises(ValueError, match="timestamp 'soon' is not a number"):
        read_events(p)
    p.write_text(json.dumps({"user": "a", "item": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"missing field\(s\) \['timestamp'\]"):
        read_events(p)
    with pytest.raises(ValueError, match=r"unsupported events file extension '\.txt'"):
        read_events(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="unknown event type 'like'"):
        event_type_id("like")


def test_write_jsonl_round_trips(tmp_path):
    ev = [Event("a", 1.5, "cart", "x", {"price": "3"})]
    write_jsonl(ev, tmp_path / "o.jsonl")
    back = read_events(tmp_path / "o.jsonl")
    assert back == ev and back[0].context == {"price": "3"}


def test_movielens_u_data_and_ratings_dat(tmp_path):
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    ev = load_movielens(tmp_path)
    assert ev[0] == Event("196", 881250949.0, "view", "242") and ev[0].context == {"rating": "3"}
    dat = tmp_path / "ml1m"
    dat.mkdir()
    (dat / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    ev = load_movielens(dat / "ratings.dat")
    assert [e.item for e in ev] == ["1193", "661"]
    (dat / "ratings.dat").write_text("1::1193::5\n")
    with pytest.raises(ValueError, match="expected 4 fields"):
        load_movielens(dat)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no MovieLens ratings file"):
        load_movielens(empty)
