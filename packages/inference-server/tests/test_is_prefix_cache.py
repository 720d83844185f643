"""Prefix cache: chained keys, longest match with token verification, refcounts, LRU eviction (leaves
first), hit statistics, and exact K/V / snapshot round trips."""

from __future__ import annotations

import pytest
import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import build_model
from nanoforge.inference_server.engine.kv import set_prefix
from nanoforge.inference_server.engine.prefix_cache import PrefixCache, chain_keys

torch.set_num_threads(1)


def model(attention="softmax"):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50,
        n_layer=2,
        n_head=2,
        d_model=16,
        max_seq_len=64,
        positions="rope",
        attention=attention,
        sliding_window=5,
    )
    return build_model(cfg).eval()


def filled_state(m, tokens):
    st = m.new_state(1, 64)
    m(torch.tensor([tokens]), state=st)
    return st


def test_chain_keys_name_whole_prefixes():
    a = chain_keys(list(range(10)), 4)
    assert len(a) == 2  # the partial last block has no key
    b = chain_keys([*range(4), 99, *range(5, 10)], 4)
    assert a[0] == b[0] and a[1] != b[1]  # block 1 differs -> its key and every later key differ
    c = chain_keys([0, 1, 2, 3, 0, 1, 2, 3], 4)
    assert c[0] != c[1]  # same tokens at another depth: another key
    assert chain_keys(list(range(8)), 4, salt="lora-a") != chain_keys(list(range(8)), 4)


def test_match_insert_restore_round_trip_softmax():
    m = model()
    toks = list(range(1, 13))
    cache = PrefixCache(m, block_size=4, capacity_blocks=8)
    keys = chain_keys(toks, 4)
    st = filled_state(m, toks)
    for j, k in enumerate(keys):
        cache.insert(k, toks[j * 4 : (j + 1) * 4], j, st)
    found = cache.match(keys[:2], toks)
    assert len(found) == 2 and cache.stats.hit_rate == 1.0 and cache.stats.hit_tokens == 8
    fresh = m.new_state(1, 64)
    n = cache.restore(found, fresh)
    set_prefix(fresh, n)
    assert n == 8
    for i in range(2):
        assert torch.equal(fresh.layers[i]["k"][0, :, :8], st.layers[i]["k"][0, :, :8])
    # continuing from the restored prefix gives the logits of the full run
    full = m(torch.tensor([toks]))[0, -1]
    cont = m(torch.tensor([toks[8:]]), state=fresh)[0, -1]
    assert torch.allclose(full, cont, atol=1e-5)


def test_snapshot_layers_restore_the_state_at_the_block_end():
    m = model(attention=("softmax", "sliding"))
    cache = PrefixCache(m, block_size=4, capacity_blocks=8)
    assert cache.needs_snapshots and cache.slot_layers == [True, False]
    toks = list(range(3, 15))
    keys = chain_keys(toks, 4)
    st = m.new_state(1, 64)
    for j in range(3):  # prefill block by block, snapshot at each end
        m(torch.tensor([toks[j * 4 : (j + 1) * 4]]), state=st)
        cache.insert(keys[j], toks[j * 4 : (j + 1) * 4], j, st)
    found = cache.match(keys[:2], toks)
    fresh = m.new_state(1, 64)
    set_prefix(fresh, cache.restore(found, fresh))
    full = m(torch.tensor([toks]))[0, -1]
    cont = m(torch.tensor([toks[8:]]), state=fresh)[0, -1]
    assert torch.allclose(full, cont, atol=1e-5)


def test_token_verification_refcounts_and_lru_eviction():
    m = model()
    cache = PrefixCache(m, block_size=2, capacity_blocks=3)
    toks = [1, 2, 3, 4, 5, 6, 7, 8]
    st = filled_state(m, toks)
    keys = chain_keys(toks, 2)
    blocks = [cache.insert(keys[j], toks[2 * j : 2 * j + 2], j, st) for j in range(3)]
    assert len(cache) == 3
    assert cache.match(keys[:1], [9, 9]) == []  # same key, other tokens: never served
    cache.acquire(blocks)
    assert cache.insert(keys[3], toks[6:8], 3, st) is None  # everything pinned: nothing evicted
    cache.release(blocks)
    assert cache.pinned() == 0
    with pytest.raises(RuntimeError, match="released more often"):
        cache.release(blocks[:1])
    cache.match(keys[:3], toks)  # touches deepest first: block 2, 1, then 0 (most recent)
    assert cache.insert(keys[3], toks[6:8], 3, st) is not None
    assert keys[2] not in cache and keys[0] in cache and keys[1] in cache  # the leaf went first
    assert cache.stats.evicted_blocks == 1 and cache.pinned() == 0


def test_disabled_cache_matches_nothing():
    m = model()
    cache = PrefixCache(m, block_size=4, capacity_blocks=0)
    st = filled_state(m, list(range(8)))
    keys = chain_keys(list(range(8)), 4)
    assert not cache.enabled and cache.insert(keys[0], list(range(4)), 0, st) is None
    assert cache.match(keys, list(range(8))) == [] and cache.stats.lookup_blocks == 0
