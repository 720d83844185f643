"""ModelState: incremental decode equals the full forward for every variant; row reset / select / copy."""

import pytest
import torch

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


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_equals_full(kind: str) -> None:
    model = tiny(kind)
    x = torch.randint(0, 97, (2, 14))
    with torch.no_grad():
        full = model(x)
        state = model.new_state(2, 20)
        parts = [model(x[:, :5], state=state)]  # prefill
        parts += [model(x[:, t : t + 1], state=state) for t in range(5, 9)]  # decode steps
        parts.append(model(x[:, 9:14], state=state))  # a multi-token chunk after the prefill
    torch.testing.assert_close(full, torch.cat(parts, 1), atol=1e-5, rtol=1e-5)
    assert state.lengths.tolist() == [14, 14] and state.next_pos.tolist() == [14, 14]


@pytest.mark.parametrize("kind", KINDS)
def test_rows_reset_select_copy(kind: str) -> None:
    model = tiny(kind)
    a, b = torch.randint(0, 97, (1, 7)), torch.randint(0, 97, (1, 3))
    with torch.no_grad():
        ref_a = model(a)
        ref_b = model(b)
        # Row 1 is evicted and replaced by a new request b, prefilled alone and copied in.
        state = model.new_state(2, 16)
        model(torch.cat([a[:, :4], a[:, :4]]), state=state)
        state.reset_rows([1])
        one = model.new_state(1, 16)
        model(b[:, :2], state=one)
        state.copy_rows_from(one, [0], [1])
        assert state.offset is None  # rows now have different lengths: 4 and 2
        step1 = model(torch.stack([a[:, 4], b[:, 2]]), state=state)
        torch.testing.assert_close(step1[0, 0], ref_a[0, 4], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step1[1, 0], ref_b[0, 2], atol=1e-5, rtol=1e-5)
        # b finishes: compact the batch to row 0 and keep decoding a.
        small = state.select([0])
        assert small.batch_size == 1 and small.offset == 5
        out = torch.cat([model(a[:, t : t + 1], state=small) for t in (5, 6)], 1)
        torch.testing.assert_close(out, ref_a[:, 5:7], atol=1e-5, rtol=1e-5)


def test_reset_row_behaves_like_new() -> None:
    model = tiny("retnet")
    x = torch.randint(0, 97, (2, 5))
    with torch.no_grad():
        state = model.new_state(2, 16)
        model(x, state=state)
        state.reset_rows([0, 1])
        assert state.offset == 0 and all(
            float(t.abs().sum()) == 0 for layer in state.layers for t in layer.values()
        )
        torch.testing.assert_close(model(x, state=state), model(x))


def test_padded_prefill_then_decode_matches_single() -> None:
    model = tiny("softmax")
    long, short = torch.randint(1, 97, (1, 6)), torch.randint(1, 97, (1, 2))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    mask = (batch != 0).long()
    mask[0] = 1
    with torch.no_grad():
        state = model.new_state(2, 10)
        model(batch, state=state, attention_mask=mask)
        step = model(torch.tensor([[7], [9]]), state=state)
        ref = model(torch.cat([short, torch.tensor([[9]])], 1))
    torch.testing.assert_close(step[1, 0], ref[0, -1], atol=1e-5, rtol=1e-5)
    assert state.next_pos.tolist() == [7, 3]


def test_sliding_state_is_a_ring_of_window_slots() -> None:
    model = tiny("sliding")
    state = model.new_state(1, 64)
    assert state.layers[0]["k"].shape == (1, 2, 4, 8)  # (B, nkv, window, hd), independent of max_len
    x = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        full = model(x)
        inc = torch.cat(
            [model(x[:, :3], state=state)] + [model(x[:, t : t + 1], state=state) for t in range(3, 20)], 1
        )
    torch.testing.assert_close(full, inc, atol=1e-5, rtol=1e-5)


def test_state_errors() -> None:
    model = tiny("softmax")
    state = model.new_state(1, 4)
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long), state=state)
        with pytest.raises(
            ValueError, match="decode state is full: 3 slots used \\+ 2 new tokens > max_len=4"
        ):
            model(torch.zeros(1, 2, dtype=torch.long), state=state)
        with pytest.raises(ValueError, match="batch_size=1 but idx has 2 rows"):
            model(torch.zeros(2, 1, dtype=torch.long), state=state)
    with pytest.raises(ValueError, match="batch_size > 0"):
        model.new_state(0, 4)
    other = tiny("softmax").new_state(1, 8)
    with pytest.raises(ValueError, match="different shape"):
        state.copy_rows_from(other, [0], [0])
