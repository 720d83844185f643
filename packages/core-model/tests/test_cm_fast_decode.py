"""The lean decode step (fast_decode) equals the reference forward: logits, greedy tokens, every row layout;
it is really taken when eligible, falls back when not, and notices weight and module changes."""

import copy
import pickle

import pytest
import torch
from torch import nn

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.generate import generate
from nanoforge.core_model.model import GPT, build_model

CONFIGS = {
    # Llama-shaped: RMSNorm, SwiGLU, RoPE, GQA, untied.
    "llama": dict(mlp="swiglu", norm="rmsnorm", positions="rope", n_kv_head=2, tie_embeddings=False),
    # GPT-2-shaped: LayerNorm with bias, GELU, learned positions, biases everywhere, tied.
    "gpt2": dict(
        mlp="gelu_tanh", positions="learned", qkv_bias=True, out_bias=True, mlp_bias=True, n_kv_head=4
    ),
    # QK-norm, logit soft-cap, MQA, sinusoidal positions, biased q/k/v (Qwen-like).
    "qknorm-mqa": dict(
        mlp="swiglu",
        norm="rmsnorm",
        positions="sinusoidal",
        qk_norm=True,
        logit_softcap=5.0,
        n_kv_head=1,
        qkv_bias=True,
    ),
    # RoPE with YaRN scaling and a gated MLP with biases.
    "yarn": dict(
        mlp="swiglu",
        mlp_bias=True,
        norm="rmsnorm",
        positions="rope",
        n_kv_head=2,
        rope_scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32},
    ),
}


def tiny(name: str = "llama", **kw: object) -> GPT:
    torch.manual_seed(0)
    args: dict = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=64, init_std=0.2)
    args.update(CONFIGS[name])
    args.update(kw)
    return build_model(ModelConfig(**args)).eval()


def decode(model: GPT, prompt: torch.Tensor, steps: torch.Tensor, fast: bool, mask=None) -> torch.Tensor:
    """Prefill ``prompt`` then feed ``steps`` (B, n) one column at a time; (B, n, V) logits of the steps."""
    model.fast_decode = fast
    with torch.inference_mode():
        state = model.new_state(prompt.shape[0], prompt.shape[1] + steps.shape[1])
        model(prompt, state=state, attention_mask=mask)
        out = torch.cat([model(steps[:, t : t + 1], state=state) for t in range(steps.shape[1])], 1)
    model.fast_decode = True
    return out


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "fused"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_step_equals_reference(name: str, pack: bool) -> None:
    model = tiny(name)
    model._fast.pack = pack
    prompt, steps = torch.randint(0, 97, (3, 9)), torch.randint(0, 97, (3, 6))
    ref = decode(model, prompt, steps, fast=False)
    calls = model._fast.calls
    fast = decode(model, prompt, steps, fast=True)
    assert model._fast.calls == calls + 6  # every decode step took the fast path
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)
    assert torch.equal(fast.argmax(-1), ref.argmax(-1))


def test_greedy_tokens_equal_with_left_padding_and_single_rows() -> None:
    model = tiny("llama", init_std=0.3)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41], [3]]
    calls = model._fast.calls
    fast = generate(model, prompts, max_new_tokens=12, temperature=0.0)
    assert model._fast.calls > calls
    model.fast_decode = False
    ref = generate(model, prompts, max_new_tokens=12, temperature=0.0)
    singles = [generate(model, [p], max_new_tokens=12, temperature=0.0)[0] for p in prompts]
    assert fast == ref == singles
    assert len({tuple(r) for r in fast}) > 1  # the rows really differ


def test_padded_and_unaligned_rows_equal_reference() -> None:
    """Left-padded rows (masked cache) and rows of different lengths (per-row writes, the server's case)."""
    model = tiny("llama")
    prompt = torch.randint(1, 97, (2, 6))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0
    steps = torch.randint(0, 97, (2, 4))
    torch.testing.assert_close(
        decode(model, prompt, steps, True, mask),
        decode(model, prompt, steps, False, mask),
        atol=2e-5,
        rtol=1e-5,
    )

    def unaligned(fast: bool) -> torch.Tensor:
        model.fast_decode = fast
        with torch.inference_mode():
            state, one = model.new_state(2, 16), model.new_state(1, 16)
            model(prompt, state=state)
            model(prompt[:1, :2], state=one)
            state.copy_rows_from(one, [0], [1])  # rows now hold 6 and 2 tokens
            assert state.offset is None
            return torch.cat([model(steps[:, t : t + 1], state=state) for t in range(4)], 1)

    calls = model._fast.calls
    fast = unaligned(True)
    assert model._fast.calls == calls + 4
    torch.testing.assert_close(fast, unaligned(False), atol=2e-5, rtol=1e-5)


def test_state_bookkeeping_matches_reference() -> None:
    model = tiny("llama")
    states = []
    for fast in (True, False):
        model.fast_decode = fast
        with torch.inference_mode():
            s = model.new_state(2, 12)
            model(torch.randint(0, 97, (2, 5)), state=s)
            model(torch.tensor([[1], [2]]), state=s)
        states.append(s)
    a, b = states
    assert a.lengths.tolist() == b.lengths.tolist() == [6, 6] and a.offset == b.offset == 6
    assert torch.equal(a.next_pos, b.next_pos) and torch.equal(a.valid, b.valid)


def test_weight_changes_are_picked_up() -> None:
    model = tiny("llama")
    prompt, steps = torch.randint(0, 97, (1, 5)), torch.randint(0, 97, (1, 2))
    before = decode(model, prompt, steps, True)
    with torch.no_grad():
        model.blocks[0].attn.k_proj.weight.mul_(1.5)  # in place: same tensor, new version
        model.blocks[1].mlp.up_proj.weight.add_(0.1)
    after = decode(model, prompt, steps, True)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, decode(model, prompt, steps, False), atol=2e-5, rtol=1e-5)
    other = tiny("llama", init_std=0.3)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(
        decode(model, prompt, steps, True), decode(other, prompt, steps, False), atol=2e-5, rtol=1e-5
    )
    model.lm_head.weight = nn.Parameter(torch.zeros_like(model.lm_head.weight))  # a new tensor
    assert float(decode(model, prompt, steps, True).abs().max()) == 0.0


class Wrapped(nn.Module):
    """Stands in for a LoRA wrapper: not an nn.Linear, adds a visible offset."""

    def __init__(self, inner: nn.Linear) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + 1.0


def test_falls_back_when_not_eligible() -> None:
    model = tiny("llama")
    idx, state = torch.tensor([[1]]), model.new_state(1, 4)
    fd = model._fast
    with torch.inference_mode():
        assert fd.why_not(idx, state, None, None) is None
        assert fd.why_not(idx, None, None, None) is not None
        assert fd.why_not(torch.tensor([[1, 2]]), state, None, None) is not None
    assert "gradients" in str(fd.why_not(idx, state, None, None))  # grad mode on outside inference_mode
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in str(fd.why_not(idx, state, None, None))
    handle = model.blocks[0].mlp.register_forward_hook(lambda *a: None)
    with torch.inference_mode():
        assert "hooks" in str(fd.why_not(idx, state, None, None))
    handle.remove()
    prompt, steps = torch.randint(0, 97, (1, 5)), torch.randint(0, 97, (1, 3))
    plain = decode(model, prompt, steps, True)
    model.blocks[1].attn.v_proj = Wrapped(model.blocks[1].attn.v_proj)  # swapped after the first use
    calls = fd.calls
    wrapped = decode(model, prompt, steps, True)
    assert fd.calls == calls  # the reference path ran, so the wrapper's offset is applied
    assert not torch.allclose(plain, wrapped)
    torch.testing.assert_close(wrapped, decode(model, prompt, steps, False))
    sliding = tiny("llama", attention=("softmax", "sliding"), sliding_window=4)
    with torch.inference_mode():
        assert "softmax only" in str(sliding._fast.why_not(idx, sliding.new_state(1, 4), None, None))


def test_full_state_raises_and_copies_work() -> None:
    model = tiny("llama")
    with torch.inference_mode():
        state = model.new_state(1, 3)
        model(torch.tensor([[1, 2, 3]]), state=state)
        with pytest.raises(ValueError, match="decode state is full"):
            model(torch.tensor([[4]]), state=state)
    decode(model, torch.tensor([[1, 2]]), torch.tensor([[3]]), True)  # builds packed weights
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone._fast.model is clone
        torch.testing.assert_close(
            decode(clone, torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), True),
            decode(model, torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), True),
        )
