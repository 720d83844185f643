"""Engine self-checks (nanochat style): the continuous-batching engine must produce exactly the tokens
core-model's ``generate`` produces for each request alone — for single requests, for many requests of
different lengths arriving at different steps, with prefix-cache hits, and for every attention family.
Tiny random models (2 layers, width 32) keep each test well under a second."""

from __future__ import annotations

import random
import time

import pytest
import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.generate import generate
from nanoforge.core_model.model import build_model
from nanoforge.inference_server.engine import Engine, EngineConfig, EngineEvent, EngineRequest
from nanoforge.inference_server.errors import DeadlineExceeded, InvalidRequest, QueueFull, Unavailable
from nanoforge.inference_server.types import SamplingOptions

torch.set_num_threads(1)

VARIANTS = {
    "softmax-rope": dict(positions="rope", mlp="swiglu", norm="rmsnorm", n_kv_head=2),
    "softmax-learned": dict(positions="learned"),
    "sliding": dict(positions="rope", attention="sliding", sliding_window=6),
    "linear": dict(positions="rope", attention="linear"),
    "retnet": dict(positions="none", attention="retnet"),
    "mixed": dict(positions="rope", attention=("softmax", "sliding"), sliding_window=5),
    "performer": dict(positions="rope", attention="performer"),
    "linformer": dict(positions="learned", attention="linformer", attention_options={"linformer_k": 8}),
}


def tiny(variant: str = "softmax-rope", seed: int = 0, max_seq_len: int = 96):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=61, n_layer=2, n_head=4, d_model=32, max_seq_len=max_seq_len, **VARIANTS[variant]
    )
    return build_model(cfg).eval()


class Collector:
    """Records the events of many requests by id."""

    def __init__(self) -> None:
        self.events: dict[str, list[EngineEvent]] = {}

    def request(self, rid: str, prompt: list[int], **opts) -> EngineRequest:
        self.events[rid] = []
        options = SamplingOptions(**{"temperature": 0.0, "max_new_tokens": 10, **opts})
        return EngineRequest(prompt, options, self.events[rid].append, rid)

    def tokens(self, rid: str) -> list[int]:
        return [e.token_id for e in self.events[rid] if e.token_id is not None]

    def last(self, rid: str) -> EngineEvent:
        return self.events[rid][-1]


def reference(model, prompt, n, **kw) -> list[int]:
    return generate(model, [prompt], max_new_tokens=n, temperature=kw.pop("temperature", 0.0), **kw)[0]


def rand_prompt(rng: random.Random, n: int, vocab: int = 61) -> list[int]:
    return [rng.randrange(vocab) for _ in range(n)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_single_request_matches_generate(variant):
    model = tiny(variant)
    eng = Engine(model, EngineConfig(max_batch_size=2, prefill_chunk=8, block_size=4))
    col = Collector()
    prompt = rand_prompt(random.Random(1), 21)
    eng.submit(col.request("a", prompt, max_new_tokens=12))
    eng.run_until_idle()
    assert col.tokens("a") == reference(model, prompt, 12)
    assert col.last("a").finish_reason == "length"
    assert col.last("a").stats.completion_tokens == 12


@pytest.mark.parametrize("variant", ["softmax-rope", "sliding", "linear", "mixed"])
def test_staggered_concurrent_requests_each_match_generate_alone(variant):
    model = tiny(variant, seed=3)
    eng = Engine(model, EngineConfig(max_batch_size=3, prefill_chunk=8, block_size=4, max_queue=32))
    rng = random.Random(7)
    col = Collector()
    base = rand_prompt(rng, 12)
    prompts = {}
    for i in range(9):
        # some prompts share a prefix with `base` (prefix-cache hits), lengths 1..40
        p = (
            base[: rng.randrange(4, 12)] + rand_prompt(rng, rng.randrange(0, 28))
            if i % 3 == 0
            else rand_prompt(rng, rng.randrange(1, 40))
        )
        prompts[str(i)] = p
    ids = list(prompts)
    while ids or eng.sched.inflight:
        for _ in range(rng.randrange(0, 3)):  # 0-2 arrivals between steps
            if ids:
                rid = ids.pop(0)
                eng.submit(col.request(rid, prompts[rid], max_new_tokens=rng.randrange(1, 14)))
        eng.step()
    for rid, p in prompts.items():
        n = col.last(rid).stats.completion_tokens
        assert col.tokens(rid) == reference(model, p, n), f"request {rid} diverged"
    assert eng.table.count == 0 and eng.cache.pinned() == 0
    assert eng.metrics()["total_finished"] == 9


@pytest.mark.parametrize("variant", ["softmax-rope", "sliding", "retnet", "mixed"])
def test_prefix_cache_hit_gives_identical_tokens(variant):
    model = tiny(variant, seed=5)
    eng = Engine(model, EngineConfig(max_batch_size=4, prefill_chunk=16, block_size=4))
    rng = random.Random(3)
    system = rand_prompt(rng, 19)
    col = Collector()
    first = [*system, 5, 6]
    eng.submit(col.request("warm", first))
    eng.run_until_idle()
    assert col.last("warm").stats.cached_prompt_tokens == 0
    later = {f"q{i}": [*system, *rand_prompt(rng, 1 + i)] for i in range(3)}
    for rid, p in later.items():
        eng.submit(col.request(rid, p))
    eng.run_until_idle()
    for rid, p in later.items():
        assert col.last(rid).stats.cached_prompt_tokens == 16  # 4 full blocks of the shared 19 tokens
        assert col.tokens(rid) == reference(model, p, 10)
    m = eng.metrics()
    assert m["prefix_cache_hit_rate"] > 0.5 and m["prefix_cache_hit_tokens"] == 48
    # the identical prompt again: all usable blocks hit, still identical output
    eng.submit(col.request("again", first))
    eng.run_until_idle()
    assert col.last("again").stats.cached_prompt_tokens == 20
    assert col.tokens("again") == col.tokens("warm")


def test_prefix_cache_is_salted_by_adapter():
    model = tiny()
    eng = Engine(model, EngineConfig(block_size=4))
    col = Collector()
    p = list(range(1, 14))
    eng.submit(col.request("a", p))
    eng.run_until_idle()
    req = col.request("b", p)
    req.cache_salt = "adapter-x"
    eng.submit(req)
    eng.run_until_idle()
    assert col.last("b").stats.cached_prompt_tokens == 0


def test_seeded_sampling_matches_generate_alone_and_in_a_batch():
    model = tiny(seed=11)
    opts = dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.3, seed=1234)
    prompt = rand_prompt(random.Random(2), 9)
    ref = generate(
        model, [prompt], max_new_tokens=15, seed=1234, **{k: v for k, v in opts.items() if k != "seed"}
    )[0]
    eng = Engine(model, EngineConfig(max_batch_size=4, prefill_chunk=4, block_size=4))
    col = Collector()
    eng.submit(col.request("noise1", rand_prompt(random.Random(5), 13), temperature=1.0, max_new_tokens=20))
    eng.step()
    eng.submit(col.request("s", prompt, max_new_tokens=15, **opts))
    eng.submit(col.request("noise2", rand_prompt(random.Random(6), 3), temperature=0.5, max_new_tokens=20))
    eng.run_until_idle()
    assert col.tokens("s") == ref


def test_new_request_joins_between_decode_steps_and_long_prefill_is_chunked():
    model = tiny()
    eng = Engine(model, EngineConfig(max_batch_size=2, prefill_chunk=8, block_size=4))
    col = Collector()
    eng.submit(col.request("a", [1, 2, 3], max_new_tokens=30))
    eng.step()
    assert len(col.tokens("a")) == 2  # first token from prefill, second from the first decode step
    eng.submit(col.request("long", rand_prompt(random.Random(0), 50), max_new_tokens=3))
    for k in range(1, 7):  # 50 tokens in chunks of 8: 7 iterations; "a" decodes in every one
        eng.step()
        assert len(col.tokens("a")) == 2 + k
        assert eng.prefilling is not None and eng.prefilling.prefilled == 8 * k
        assert col.tokens("long") == []
    eng.step()  # last chunk: first token sampled, the row joins the batch and decodes in the same step
    assert len(col.tokens("long")) == 2 and len(col.tokens("a")) == 9
    assert eng.table.count == 2 and eng.metrics()["batch_size"] == 2


def test_cancel_frees_row_and_prefix_pins_at_once():
    model = tiny()
    eng = Engine(model, EngineConfig(max_batch_size=2, block_size=4))
    col = Collector()
    eng.submit(col.request("a", list(range(1, 20)), max_new_tokens=50))
    eng.submit(col.request("b", list(range(1, 10)), max_new_tokens=50))
    eng.step()
    eng.step()
    assert eng.table.count == 2 and eng.cache.pinned() > 0
    eng.cancel("a")
    eng.step()
    assert col.last("a").finish_reason == "cancelled"
    assert eng.table.count == 1 and eng.running[0].request_id == "b"
    b_pins = len(eng.running[0].blocks)
    assert eng.cache.pinned() == b_pins
    assert int(eng.table.state.lengths[1]) == 0  # the vacated row was reset
    eng.cancel("b")
    eng.step()
    assert eng.table.count == 0 and eng.cache.pinned() == 0 and eng.sched.inflight == 0


def test_deadline_exceeded_frees_memory():
    model = tiny()
    eng = Engine(model, EngineConfig(max_batch_size=1))
    col = Collector()
    req = col.request("late", [1, 2, 3], max_new_tokens=50)
    req.deadline = time.monotonic() + 3600
    eng.submit(req)
    eng.step()
    assert eng.table.count == 1
    req.deadline = time.monotonic() - 1  # passes while running
    queued = col.request("queued", [4, 5], max_new_tokens=5)
    queued.deadline = time.monotonic() - 1
    eng.submit(queued)
    eng.step()
    assert isinstance(col.last("late").error, DeadlineExceeded)
    assert isinstance(col.last("queued").error, DeadlineExceeded)
    assert eng.table.count == 0 and eng.sched.inflight == 0 and eng.sched.queued == 0


def test_bounded_queue_answers_queue_full():
    eng = Engine(tiny(), EngineConfig(max_batch_size=1, max_queue=2))
    col = Collector()
    eng.submit(col.request("a", [1]))
    eng.submit(col.request("b", [1]))
    with pytest.raises(QueueFull, match="max_queue=2"):
        eng.submit(col.request("c", [1]))
    eng.step()  # "a" is admitted: a queue place frees up
    eng.submit(col.request("c", [1]))
    with pytest.raises(InvalidRequest, match="already in flight"):
        eng.submit(col.request("c", [2]))


def test_prompt_limits_and_length_clipping():
    model = tiny(max_seq_len=32)
    eng = Engine(model, EngineConfig(max_batch_size=1))
    col = Collector()
    with pytest.raises(InvalidRequest, match="limit is 31"):
        eng.submit(col.request("long", [1] * 32))
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        eng.submit(col.request("oov", [1, 61]))
    with pytest.raises(InvalidRequest, match="empty"):
        eng.submit(col.request("empty", []))
    with pytest.raises(InvalidRequest, match="temperature"):
        eng.submit(col.request("bad", [1], temperature=-1.0))
    eng.submit(col.request("clip", [1] * 28, max_new_tokens=100))
    eng.run_until_idle()
    assert len(col.tokens("clip")) == 4 and col.last("clip").finish_reason == "length"


def test_stop_token_ends_with_stop():
    model = tiny()
    prompt = [3, 1, 4, 1, 5]
    ref = reference(model, prompt, 10)
    eng = Engine(model)
    col = Collector()
    eng.submit(col.request("s", prompt, stop_token_ids=[ref[3]]))
    eng.run_until_idle()
    stop_at = ref.index(ref[3])
    assert col.tokens("s") == ref[: stop_at + 1]
    assert col.last("s").finish_reason == "stop"


def test_logprobs_are_the_model_distribution():
    model = tiny()
    prompt = [7, 8, 9]
    eng = Engine(model)
    col = Collector()
    eng.submit(col.request("lp", prompt, max_new_tokens=3, logprobs=True, top_logprobs=3))
    eng.run_until_idle()
    first = col.events["lp"][0]
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([prompt]))[0, -1], -1)
    assert first.logprob == pytest.approx(float(want[first.token_id]), abs=1e-4)
    assert [t for t, _ in first.top] == torch.topk(want, 3).indices.tolist()
    assert first.top[0][0] == first.token_id  # greedy picks the top alternative


def test_kv_budget_sets_rows_and_is_checked():
    model = tiny(max_seq_len=64)
    eng = Engine(model, EngineConfig(max_batch_size=8, kv_budget_tokens=200))
    assert eng.table.capacity == 3 and eng.metrics()["kv_slots_total"] == 192
    with pytest.raises(ValueError, match="kv_budget_tokens=10"):
        Engine(model, EngineConfig(kv_budget_tokens=10))


def test_threaded_engine_and_draining_shutdown():
    model = tiny()
    eng = Engine(model, EngineConfig(max_batch_size=2))
    eng.start()
    col = Collector()
    prompts = {f"t{i}": [i + 1] * (i + 2) for i in range(4)}
    for rid, p in prompts.items():
        eng.submit(col.request(rid, p, max_new_tokens=8))
    eng.shutdown(drain=True, timeout=30)
    for rid, p in prompts.items():
        assert col.tokens(rid) == reference(model, p, 8)
        assert col.last(rid).finish_reason == "length"
    with pytest.raises(Unavailable):
        eng.submit(col.request("after", [1]))


def test_shutdown_without_drain_cancels():
    eng = Engine(tiny(), EngineConfig(max_batch_size=1))
    col = Collector()
    eng.submit(col.request("a", [1, 2], max_new_tokens=80))
    eng.submit(col.request("b", [1, 2], max_new_tokens=80))
    eng.step()
    eng.shutdown(drain=False)
    assert col.last("a").finish_reason == "cancelled" and col.last("b").finish_reason == "cancelled"
    assert eng.table.count == 0 and eng.sched.inflight == 0


def test_a_failing_iteration_fails_its_requests_and_the_engine_keeps_serving():
    model = tiny()
    eng = Engine(model, EngineConfig(max_batch_size=2))
    real_forward = model.forward
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real_forward(*args, **kw)

    model.forward = flaky
    col = Collector()
    eng.start()
    try:
        eng.submit(col.request("a", [1, 2, 3], max_new_tokens=10))
        deadline = time.monotonic() + 10
        while eng.sched.inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        err = col.last("a").error
        assert err is not None and "internal engine error: RuntimeError: boom" in str(err)
        assert eng.table.count == 0 and eng.sched.inflight == 0
        eng.submit(col.request("b", [1, 2, 3], max_new_tokens=5))
        eng.shutdown(drain=True, timeout=10)
        assert col.tokens("b") == reference(model, [1, 2, 3], 5)
    finally:
        eng.shutdown(drain=False)


def test_a_broken_logits_processor_fails_only_its_request():
    model = tiny()
    eng = Engine(model, EngineConfig(max_batch_size=2))
    col = Collector()

    def broken(history, row):
        if len(history) == 2:
            raise ValueError("grammar dead end")
        return row

    bad = col.request("bad", [1, 2], max_new_tokens=8)
    bad.logits_processors = [broken]
    eng.submit(bad)
    eng.submit(col.request("good", [3, 4], max_new_tokens=8))
    eng.run_until_idle()
    assert "logits processor failed: ValueError: grammar dead end" in str(col.last("bad").error)
    assert len(col.tokens("bad")) == 2
    assert col.tokens("good") == reference(model, [3, 4], 8)
    assert eng.table.count == 0 and eng.sched.inflight == 0


@pytest.mark.parametrize("variant", ["softmax-rope", "mixed"])
def test_random_cancellations_and_a_tiny_prefix_cache_keep_every_row_exact(variant):
    model = tiny(variant, seed=9)
    # 3 rows, prefix cache of only 3 blocks: constant eviction pressure while blocks are pinned
    eng = Engine(model, EngineConfig(max_batch_size=3, prefill_chunk=4, block_size=4, prefix_cache_tokens=12))
    rng = random.Random(11)
    col = Collector()
    shared = rand_prompt(rng, 10)
    prompts = {
        str(i): [*shared[: rng.randrange(0, 10)], *rand_prompt(rng, rng.randrange(1, 20))] for i in range(14)
    }
    pending = list(prompts)
    cancelled = set()
    while pending or eng.sched.inflight:
        if pending and rng.random() < 0.6:
            rid = pending.pop(0)
            eng.submit(col.request(rid, prompts[rid], max_new_tokens=12))
        submitted = [r for r in prompts if r not in pending and r not in cancelled]
        live = [r for r in submitted if not (col.events[r] and col.events[r][-1].final)]
        if live and rng.random() < 0.15:
            victim = rng.choice(live)
            eng.cancel(victim)
            cancelled.add(victim)
        eng.step()
    for rid, p in prompts.items():
        ref = reference(model, p, 12)
        got = col.tokens(rid)
        if col.last(rid).finish_reason == "cancelled":
            assert rid in cancelled and got == ref[: len(got)]
        else:
            assert got == ref, f"request {rid} diverged"
    mid_decode = [r for r in cancelled if col.last(r).finish_reason == "cancelled" and col.tokens(r)]
    assert mid_decode, "the test should cancel some request while it decodes"
    assert eng.table.count == 0 and eng.cache.pinned() == 0 and len(eng.cache) <= 3
    assert eng.cache.stats.evicted_blocks > 0


def test_step_counters_account_for_prefill_and_decode() -> None:
    eng = Engine(tiny(), EngineConfig(max_batch_size=3, prefix_cache_tokens=0))
    col = Collector()
    for i, n in enumerate((5, 9, 13)):
        eng.submit(col.request(str(i), list(range(1, n + 1)), max_new_tokens=4))
    eng.run_until_idle()
    m = eng.metrics()
    assert m["total_prefill_tokens"] == 5 + 9 + 13
    # each request's first token comes from its prefill, the other 3 from decode steps
    assert m["total_decode_rows"] == 3 * 3 and m["total_tokens"] == 3 * 4
    assert m["total_decode_steps"] <= m["total_decode_rows"]
    assert m["total_prefill_seconds"] > 0 and m["total_decode_seconds"] > 0
