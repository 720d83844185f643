"""Per-row sampling: batched greedy, seeded rows equal core-model's generate path, penalties, logits
processors (the structured-output hook) and log-probabilities."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoforge.core_model.generate import SamplingParams, process_logits
from nanoforge.inference_server.engine.sampling import RowSampler, sample_batch
from nanoforge.inference_server.types import SamplingOptions

torch.set_num_threads(1)


def sampler(prompt=(1,), **kw) -> RowSampler:
    return RowSampler.from_options(SamplingOptions(**kw), list(prompt), 16)


def test_greedy_rows_take_the_argmax():
    logits = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    draws = sample_batch(logits, [sampler(temperature=0.0) for _ in range(3)], [[], [], []])
    assert [d.token_id for d in draws] == logits.argmax(-1).tolist()
    assert all(d.logprob is None for d in draws)


def test_seeded_row_is_independent_of_its_batch_neighbours():
    logits = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    opts = dict(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05, seed=42)
    alone = [sample_batch(logits[1:2], [sampler(**opts)], [[]])[0].token_id]
    in_batch = sample_batch(
        logits, [sampler(temperature=1.0), sampler(**opts), sampler(), sampler()], [[]] * 4
    )
    assert in_batch[1].token_id == alone[0]
    # and equals core-model's process_logits + multinomial with the same seed
    g = torch.Generator().manual_seed(42)
    params = SamplingParams(0, 0.8, 5, 0.9, 0.05, 1.0)
    want = torch.multinomial(torch.softmax(process_logits(logits[1:2], params), -1)[0], 1, generator=g)
    assert alone[0] == int(want)


def test_repetition_penalty_tracks_seen_tokens():
    s = sampler(prompt=(3,), temperature=0.0, repetition_penalty=100.0)
    logits = torch.zeros(1, 16)
    logits[0, 3] = 2.0
    logits[0, 7] = 1.0
    assert sample_batch(logits, [s], [[]])[0].token_id == 7  # token 3 (in the prompt) is penalised
    assert bool(s.seen[7])
    logits[0, 9] = 0.5
    assert sample_batch(logits, [s], [[7]])[0].token_id == 9


def test_logits_processor_hook_and_logprobs():
    def ban_argmax(history, row):
        row = row.clone()
        row[row.argmax()] = float("-inf")
        return row

    logits = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    s = RowSampler.from_options(
        SamplingOptions(temperature=0.0, logprobs=True, top_logprobs=3), [1], 16, processors=[ban_argmax]
    )
    d = sample_batch(logits, [s, sampler(temperature=0.0)], [[], []])
    second_best = logits[0].topk(2).indices[1].item()
    assert d[0].token_id == second_best and d[1].token_id == logits[1].argmax().item()
    assert len(d[0].top) == 3 and d[0].top[0][0] == second_best
    want = torch.log_softmax(ban_argmax([], logits[0]), -1)  # logprobs are taken after the processors
    assert [round(p, 5) for _, p in d[0].top] == [round(v, 5) for v in want.topk(3).values.tolist()]
    assert abs(d[0].logprob - float(want[second_best])) < 1e-6


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.1, 2.0))
def test_top_k_one_is_always_the_argmax(seed, temperature):
    logits = torch.randn(1, 16, generator=torch.Generator().manual_seed(seed))
    d = sample_batch(logits, [sampler(temperature=temperature, top_k=1, seed=seed)], [[]])
    assert d[0].token_id == int(logits.argmax())
