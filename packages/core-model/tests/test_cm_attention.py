"""Attention variants: fast == math kernel, padding invariance, causality, equivalence of RetNet /
linear-attention forms, sliding-window reach, FAVOR+ kernel estimate."""

import pytest
import torch

from nanoforge.core_model.attention.linear import linear_attention_parallel, linear_attention_recurrent
from nanoforge.core_model.attention.performer import FavorFeatures
from nanoforge.core_model.attention.retnet import (
    decay_log,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
)
from nanoforge.core_model.attention.softmax import math_kernel, sdpa_kernel
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import GPT, build_model

KINDS = ["softmax", "sliding", "linear", "performer", "linformer", "retnet"]


def tiny(kind: str = "softmax", **kw: object) -> GPT:
    torch.manual_seed(0)
    args = dict(
        vocab_size=97,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        d_model=32,
        max_seq_len=64,
        positions="rope",
        attention=kind,
        sliding_window=4,
        init_std=0.2,
    )
    args.update(kw)
    return build_model(ModelConfig(**args)).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_sdpa_equals_math_kernel(causal: bool, n_kv: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 4, 6, 8)
    k, v = torch.randn(2, n_kv, 6, 8), torch.randn(2, n_kv, 6, 8)
    mask = None if causal else (torch.rand(2, 1, 6, 6) > 0.4) | torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(
        sdpa_kernel(q, k, v, mask, causal, 0.0), math_kernel(q, k, v, mask, causal, 0.0)
    )
    q1 = q[:, :, :1]  # single-token decode (GQA fast path of sdpa_kernel)
    torch.testing.assert_close(
        sdpa_kernel(q1, k, v, None, False, 0.0), math_kernel(q1, k, v, None, False, 0.0)
    )


@pytest.mark.parametrize("kind", ["softmax", "sliding"])
def test_model_sdpa_equals_math_with_padding_and_cache(kind: str) -> None:
    fast = tiny(kind)
    slow = tiny(kind, attention_options={"kernel": "math"})
    slow.load_state_dict(fast.state_dict())
    x = torch.randint(0, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x))
        torch.testing.assert_close(fast(x, attention_mask=mask), slow(x, attention_mask=mask))
        sf, ss = fast.new_state(2, 16), slow.new_state(2, 16)
        fast(x, state=sf, attention_mask=mask)
        slow(x, state=ss, attention_mask=mask)
        nxt = torch.tensor([[3], [5]])
        torch.testing.assert_close(fast(nxt, state=sf), slow(nxt, state=ss))


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_equals_unpadded_rows(kind: str) -> None:
    model = tiny(kind)
    x = torch.randint(1, 97, (3, 10))
    lengths = [10, 6, 1]
    mask = torch.zeros(3, 10, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, 10 - n :] = 1
    padded = x * mask  # pad id 0 on the left
    with torch.no_grad():
        out = model(padded, attention_mask=mask)
        for i, n in enumerate(lengths):
            single = model(x[i : i + 1, 10 - n :])
            torch.testing.assert_close(out[i, 10 - n :], single[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind: str) -> None:
    model = tiny(kind)
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 97
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-4


def test_sliding_window_reach() -> None:
    """One sliding layer (window 4): position t sees tokens t-3..t only."""
    model = tiny("sliding", n_layer=1)
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, 2] = (y[0, 2] + 1) % 97
    with torch.no_grad():
        a, b = model(x), model(y)
    assert (a[0, 2:6] - b[0, 2:6]).abs().max() > 1e-4  # inside the window of token 2
    torch.testing.assert_close(a[0, 6:], b[0, 6:])  # beyond it


def _pads(B: int, T: int) -> torch.Tensor:
    e = torch.ones(B, T, dtype=torch.bool)
    e[1, :3] = False  # a left-padded row
    e[0, 5] = False  # and a hole in the middle (an idle step in a batched decode)
    return e


def test_retnet_parallel_recurrent_chunkwise_agree() -> None:
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 11, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    e = _pads(B, T)
    k, v = k * e[:, None, :, None], v * e[:, None, :, None]
    log_g = decay_log(H)
    par = retention_parallel(q, k, v, e, log_g)
    rec, S_rec = retention_recurrent(q, k, v, e, log_g, torch.zeros(B, H, D, D))
    torch.testing.assert_close(par, rec, atol=1e-5, rtol=1e-5)
    for chunk in (1, 3, 4, T):
        ch, S_ch = retention_chunkwise(q, k, v, e, log_g, chunk)
        torch.testing.assert_close(par, ch, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(S_rec, S_ch, atol=1e-5, rtol=1e-5)
    # multi-scale: every head decays at its own rate, 1 - 2**(-5-h)
    torch.testing.assert_close(log_g.exp(), 1 - 2.0 ** (-5 - torch.arange(H).float()))


def test_retnet_model_forms_agree() -> None:
    par = tiny("retnet")
    chunk = tiny("retnet", attention_options={"retnet_form": "chunkwise", "retnet_chunk": 3})
    chunk.load_state_dict(par.state_dict())
    x = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(par(x), chunk(x), atol=1e-5, rtol=1e-5)


def test_linear_attention_parallel_equals_recurrent() -> None:
    torch.manual_seed(0)
    B, H, T, F, D = 2, 3, 9, 5, 4
    fq, fk = torch.rand(B, H, T, F), torch.rand(B, H, T, F)
    fk = fk * _pads(B, T)[:, None, :, None]
    v = torch.randn(B, H, T, D)
    par = linear_attention_parallel(fq, fk, v)
    S, z = torch.zeros(B, H, F, D), torch.zeros(B, H, F)
    rec = linear_attention_recurrent(fq, fk, v, S, z)
    torch.testing.assert_close(par, rec, atol=1e-5, rtol=1e-5)
    # continuing from a state equals running the whole sequence
    S2, z2 = torch.zeros(B, H, F, D), torch.zeros(B, H, F)
    linear_attention_recurrent(fq[:, :, :4], fk[:, :, :4], v[:, :, :4], S2, z2)
    tail = linear_attention_parallel(fq[:, :, 4:], fk[:, :, 4:], v[:, :, 4:], S2, z2)
    torch.testing.assert_close(par[:, :, 4:], tail, atol=1e-5, rtol=1e-5)


def test_favor_features_estimate_softmax_kernel() -> None:
    torch.manual_seed(0)
    d = 8
    feats = FavorFeatures(d, n_features=4096, seed=0)
    q, k = torch.randn(6, d) * 0.5, torch.randn(6, d) * 0.5
    est = feats(q, is_query=False) @ feats(k, is_query=False).T
    exact = torch.exp(q @ k.T / d**0.5)
    assert ((est - exact).abs() / exact).mean() < 0.05
    # the projection is fixed by the seed (not re-drawn) and different seeds give different draws
    torch.testing.assert_close(
        FavorFeatures(d, 16, seed=3).projection, FavorFeatures(d, 16, seed=3).projection
    )
    assert not torch.equal(FavorFeatures(d, 16, seed=3).projection, FavorFeatures(d, 16, seed=4).projection)


def test_mixed_attention_per_layer() -> None:
    model = tiny(("softmax", "retnet"))
    assert type(model.blocks[0].attn.mixer).__name__ == "SoftmaxMixer"
    assert type(model.blocks[1].attn.mixer).__name__ == "RetentionMixer"
    x = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        full = model(x)
        s = model.new_state(1, 8)
        inc = torch.cat(
            [model(x[:, :4], state=s)] + [model(x[:, t : t + 1], state=s) for t in range(4, 7)], 1
        )
    torch.testing.assert_close(full, inc, atol=1e-5, rtol=1e-5)
