"""Scheduler (bounded queue, cancellation, FCFS admission) and RowTable (packed rows, zero-copy view)."""

from __future__ import annotations

import pytest
import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import build_model
from nanoforge.inference_server.engine.kv import RowTable, row_view
from nanoforge.inference_server.engine.request import EngineRequest, RequestStats, Sequence
from nanoforge.inference_server.engine.sampling import RowSampler
from nanoforge.inference_server.engine.scheduler import Scheduler
from nanoforge.inference_server.errors import InvalidRequest, QueueFull, Unavailable
from nanoforge.inference_server.types import SamplingOptions

torch.set_num_threads(1)


def seq(rid: str) -> Sequence:
    opts = SamplingOptions(temperature=0.0)
    return Sequence(
        req=EngineRequest([1], opts, lambda e: None, rid),
        max_new=4,
        sampler=RowSampler.from_options(opts, [1], 10),
        stop_ids=frozenset(),
        stats=RequestStats(),
    )


def model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, max_seq_len=24, positions="rope")
    return build_model(cfg).eval()


def test_queue_is_bounded_and_fcfs():
    s = Scheduler(max_queue=2)
    s.submit(seq("a"))
    s.submit(seq("b"))
    with pytest.raises(QueueFull, match=r"2 waiting, max_queue=2"):
        s.submit(seq("c"))
    assert s.collect() == set() and s.queued == 2
    assert s.pop_admissible(free_rows=0) is None
    assert s.pop_admissible(free_rows=1).request_id == "a"
    assert s.queued == 1
    s.submit(seq("c"))  # room again
    s.collect()
    assert [x.request_id for x in s.waiting] == ["b", "c"]


def test_duplicate_ids_cancel_and_close():
    s = Scheduler(max_queue=4)
    s.submit(seq("a"))
    with pytest.raises(InvalidRequest, match="'a' is already in flight"):
        s.submit(seq("a"))
    s.cancel("unknown")  # no-op
    s.cancel("a")
    assert s.collect() == {"a"}
    s.drop_waiting(s.waiting[0])
    s.done("a")
    assert s.inflight == 0 and s.queued == 0
    s.submit(seq("a"))  # the id is free again once done
    s.close()
    with pytest.raises(Unavailable, match="shutting down"):
        s.submit(seq("b"))
    assert s.inflight_ids() == ["a"]


def test_rowtable_packs_rows_and_view_shares_storage():
    m = model()
    table = RowTable(m, capacity=3, max_len=24)
    rows = []
    for n in (3, 5, 7):
        one = m.new_state(1, 24)
        m(torch.arange(1, n + 1)[None], state=one)
        rows.append(one.layers[0]["k"][0].clone())
        table.add(one)
    assert table.free == 0 and table.state.lengths.tolist() == [3, 5, 7]
    with pytest.raises(RuntimeError, match="no free row"):
        table.add(m.new_state(1, 24))
    view = table.view()
    assert view.offset is None and not view.padded
    assert view.layers[0]["k"].data_ptr() == table.state.layers[0]["k"].data_ptr()
    moved = table.remove(0)  # row 2 moves into row 0, row 2 is reset
    assert moved == 2 and table.count == 2
    assert table.state.lengths.tolist() == [7, 5, 0]
    assert torch.equal(table.state.layers[0]["k"][0], rows[2])
    assert not table.state.layers[0]["k"][2].any()
    assert table.remove(1) is None and table.count == 1
    v = row_view(table.state, 1)
    m(torch.tensor([[4]]), state=v)  # a decode step through the view lands in the big state
    assert table.state.lengths.tolist() == [8, 0, 0] and table.used_slots() == 8
