"""The sequence model: shapes, causality, padding invariance, losses, conversion labels, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nanoforge.recommender.dataset import TrainData, conversion_labels, encode
from nanoforge.recommender.events import Event
from nanoforge.recommender.model import LOSSES, SeqRec, SeqRecConfig
from nanoforge.recommender.vocab import ItemVocab


def tiny(**kw) -> SeqRec:
    torch.manual_seed(0)
    cfg = SeqRecConfig(n_items=40, d_model=16, n_layer=2, n_head=2, max_len=12, dropout=0.0, **kw)
    return SeqRec(cfg).eval()


def rand_ids(B, T, hi, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, hi, (B, T), generator=g)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_shapes_and_causality(positions):
    m = tiny(positions=positions)
    items, types, gaps = rand_ids(2, 8, 40, 1), rand_ids(2, 8, 5, 2), rand_ids(2, 8, 34, 3)
    h = m(items, types, gaps)
    assert h.shape == (2, 8, 16)
    assert m.item_logits(h).shape == (2, 8, 40) and m.type_logits(h).shape == (2, 8, 5)
    assert m.conversion_logit(h).shape == (2, 8)
    items2 = items.clone()
    items2[:, 5:] = 7  # change the future: earlier positions must not move
    h2 = m(items2, types, gaps)
    assert torch.allclose(h[:, :5], h2[:, :5], atol=1e-6)
    assert not torch.allclose(h[:, 5:], h2[:, 5:])


def test_left_padding_does_not_change_the_last_state():
    m = tiny()
    items, types, gaps = rand_ids(1, 5, 40, 4), rand_ids(1, 5, 5, 5), rand_ids(1, 5, 34, 6)
    pad = torch.zeros(1, 3, dtype=torch.long)
    h = m(items, types, gaps)[:, -1]
    hp = m(torch.cat([pad, items], 1), torch.cat([pad, types], 1), torch.cat([pad, gaps], 1))[:, -1]
    assert torch.allclose(h, hp, atol=1e-5)


def test_too_long_input_is_a_clear_error():
    m = tiny()
    x = rand_ids(1, 13, 40, 0)
    with pytest.raises(ValueError, match="13 events exceeds max_len=12"):
        m(x, x.clamp(max=4), x)


def test_backbone_config_is_validated_by_core_model():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        SeqRecConfig(n_items=10, d_model=10, n_head=3).backbone()


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_losses_are_finite_and_train(kind):
    m = tiny()
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    items = rand_ids(4, 10, 40, 7)
    h0 = None
    for _ in range(30):
        h = m(items[:, :-1], torch.ones_like(items[:, :-1]), torch.ones_like(items[:, :-1]))
        loss = LOSSES[kind](m, h.reshape(-1, 16), items[:, 1:].reshape(-1), 8, gen)
        h0 = float(loss.detach()) if h0 is None else h0
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(float(loss.detach())) and float(loss.detach()) < h0


def test_conversion_labels_by_hand():
    v, c, p = 1, 2, 4
    assert conversion_labels(np.array([v, c, p, v]), 2).tolist() == [1, 1, -1, -1]
    assert conversion_labels(np.array([v, v, v, c, p]), 1).tolist() == [0, 0, 0, 1, -1]


def test_train_batches_are_shifted_left_padded_and_seeded():
    vocab = ItemVocab(tuple("abcdef"), n_buckets=2)
    seq = [Event("u", float(i), "view", "abcdef"[i]) for i in range(6)]
    data = TrainData({"u": seq}, vocab, max_len=8, horizon=2)
    b1 = data.sample(5, torch.Generator().manual_seed(1))
    b2 = data.sample(5, torch.Generator().manual_seed(1))
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    for row in range(5):
        real = b1["items"][row] > 0
        n = int(real.sum())
        assert real[-n:].all() and not real[:-n].any()  # left padded
        inputs = b1["items"][row][-n:].tolist()
        targets = b1["next_item"][row][-n:].tolist()
        assert targets[:-1] == inputs[1:] and targets[-1] == inputs[-1] + 1  # next item of the sequence


def test_encode_keeps_the_last_events_with_their_real_gaps():
    vocab = ItemVocab(tuple("abc"), n_buckets=2)
    h = [Event("u", t, "view", it) for t, it in [(0, "a"), (100, "b"), (101, "c")]]
    x = encode([h, h[:1]], vocab, max_len=2)
    assert x["items"].tolist() == [[4, 5], [0, 3]]
    assert x["gaps"].tolist() == [[8, 3], [0, 1]]  # 100 s -> 8 (not "first event"), 1 s -> 3
    with pytest.raises(ValueError, match="history 0 is empty"):
        encode([[]], vocab, 2)
