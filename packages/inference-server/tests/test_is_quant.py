"""Weight-only quantization: nibble packing, per-layer error bounds, model logits close to fp32, fewer
bytes, and greedy generation through ``ServingModel.load(quantize=...)`` (engine == core-model generate on
the same quantized model)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from torch import nn

from nanoforge.core_model.checkpoint import save_model
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.generate import generate
from nanoforge.core_model.model import GPT
from nanoforge.inference_server.errors import InvalidRequest
from nanoforge.inference_server.quant import QUANTIZERS, Int4Linear, Int8Linear, model_bytes, quantize_model
from nanoforge.inference_server.quant.linear import pack_nibbles, unpack_nibbles
from nanoforge.inference_server.text import ServingModel
from nanoforge.inference_server.types import GenerateInput, SamplingOptions
from nanoforge.tokenizer import Tokenizer
from nanoforge.tokenizer.chat import CHATML_SPECIALS, chatml_template
from nanoforge.tokenizer.io import save_tokenizer

torch.set_num_threads(1)
TOK = Tokenizer([], special_tokens=CHATML_SPECIALS, chat_template=chatml_template())


def tiny_gpt(seed: int = 0, d_model: int = 64) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=260, n_layer=2, n_head=4, d_model=d_model, max_seq_len=64, positions="rope")
    return GPT(cfg).eval()


def test_nibble_pack_round_trip_and_layout():
    q = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    packed = pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 6)
    assert torch.equal(unpack_nibbles(packed), q)
    assert int(packed[0, 0]) == int(q[0, 0]) | (int(q[0, 1]) << 4)  # even column = low nibble


def test_int8_layer_error_is_within_half_a_step_and_forward_matches_dequantized():
    torch.manual_seed(1)
    lin = nn.Linear(48, 20)
    q = Int8Linear.from_linear(lin)
    assert q.qweight.dtype == torch.int8 and q.scale.shape == (20,)
    err = (q.dequantize() - lin.weight).abs()
    assert bool((err <= q.scale[:, None] / 2 + 1e-7).all())
    x = torch.randn(3, 7, 48)
    ref = nn.functional.linear(x, q.dequantize(), lin.bias)
    assert torch.allclose(q(x), ref, atol=1e-5)


@pytest.mark.parametrize("in_features", [64, 70])  # 70: the last group is zero-padded
def test_int4_layer_error_is_within_half_a_step_per_group(in_features):
    torch.manual_seed(2)
    lin = nn.Linear(in_features, 24)
    q = Int4Linear.from_linear(lin, group_size=32)
    groups = -(-in_features // 32)
    assert q.packed.shape == (24, groups * 16) and q.scale.shape == (24, groups)
    assert int(q.zero.max()) <= 15
    step = q.scale.repeat_interleave(32, dim=1)[:, :in_features]  # (out, in) step of each weight
    err = (q.dequantize() - lin.weight).abs()
    assert bool((err <= step / 2 + 1e-6).all())
    x = torch.randn(2, 5, in_features)
    assert torch.allclose(q(x), nn.functional.linear(x, q.dequantize(), lin.bias), atol=1e-5)


def test_int4_rejects_bad_group_size():
    with pytest.raises(ValueError, match="group_size=3"):
        Int4Linear.from_linear(nn.Linear(8, 8), group_size=3)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_quantized_model_logits_close_to_fp32_and_bytes_smaller():
    ref = tiny_gpt()
    x = torch.randint(0, 260, (2, 16))
    with torch.no_grad():
        base = ref(x)
    fp32_bytes = model_bytes(ref)
    errs, sizes = {}, {}
    for mode in ("int8", "int4-g32", "int4-g64", "int4-g128"):
        m = tiny_gpt()
        replaced = quantize_model(m, mode)
        assert len(replaced) == 2 * 6 and "lm_head" not in replaced  # q,k,v,o + up,down per block
        assert not any(isinstance(mod, nn.Linear) for name, mod in m.named_modules() if name in replaced)
        with torch.no_grad():
            errs[mode] = _rel_err(m(x), base)
        sizes[mode] = model_bytes(m)
    assert errs["int8"] < 0.01, errs
    assert errs["int4-g32"] < 0.12 and errs["int4-g128"] < 0.15, errs  # measured 0.088 / 0.103
    assert errs["int4-g32"] < errs["int4-g128"], errs  # smaller groups track the weights more closely
    # Linear weights are 4 bytes/value in fp32; int8 ~1 (+ scales), int4 ~0.5 (+ scales and zeros).
    linear_fp32 = sum(
        p.numel() * 4 for n, p in ref.named_parameters() if ".blocks." in f".{n}" and "proj" in n
    )
    assert fp32_bytes - sizes["int8"] > 0.7 * linear_fp32, (fp32_bytes, sizes)
    assert sizes["int4-g64"] < sizes["int8"] < fp32_bytes
    assert fp32_bytes - sizes["int4-g128"] > 0.8 * linear_fp32


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown quantize mode 'int3'; accepted: int8, int4"):
        quantize_model(tiny_gpt(), "int3")
    assert set(QUANTIZERS) >= {"int8", "int4", "int4-g32", "int4-g64", "int4-g128"}


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_serving_model_load_quantized_generates_like_core_model_generate(tmp_path, mode):
    model = tiny_gpt(3, d_model=32)
    save_model(model, tmp_path)
    save_tokenizer(TOK, tmp_path / "tokenizer")
    sm = ServingModel.load(tmp_path, quantize=mode, max_batch_size=2, prefill_chunk=16)
    try:
        assert any(isinstance(m, (Int8Linear, Int4Linear)) for m in sm.model.modules())
        assert model_bytes(sm.model) < model_bytes(model)
        inp = GenerateInput(prompt="hello", options=SamplingOptions(temperature=0.0, max_new_tokens=8))
        out = asyncio.run(sm.complete(inp))
        ref = generate(
            sm.model, [list(b"hello")], max_new_tokens=8, temperature=0, stop_token_ids=sm.stop_ids
        )
        assert out.token_ids == [t for t in ref[0] if t not in sm.stop_ids] and len(out.token_ids) >= 1
    finally:
        asyncio.run(sm.shutdown())
    with pytest.raises(InvalidRequest, match="quantize='fp8' is not supported; accepted: int8"):
        ServingModel.load(tmp_path, quantize="fp8")
