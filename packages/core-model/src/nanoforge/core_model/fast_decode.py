"""Lean decode step: one new token per row through softmax layers, with fused, prepacked weights (inference).

What it does: ``FastDecoder.step`` computes what ``GPT.forward(idx, state=state)`` computes for a (B, 1)
decode step, with fewer and faster operations:

* the q/k/v projections as ONE matmul and SwiGLU's gate/up as ONE matmul (concatenated weights);
* every matmul weight copied once into oneDNN's prepacked layout (``torch.ops.mkldnn``, what inductor uses
  on CPU): its small-batch GEMM is ~1.7x (1 row) to ~2x (8 rows) faster than ``F.linear`` here; the copies
  are built on first use and rebuilt when a source parameter changes (another tensor, storage or in-place
  update); ``F.linear`` on the fused weights when oneDNN is missing, off CPU or not fp32;
* RoPE applied to the query and key heads together, with cos/sin computed once per step for all layers;
* the new key/value written in place into the preallocated cache and attention by SDPA over the used prefix
  (the GQA query heads sharing a kv head act as a short query sequence; a mask only for padded or unaligned
  rows);
* an fp32 RMSNorm as one ``F.rms_norm`` call with its weight (bitwise the module's result), other norms via
  their ``forward`` (no ``nn.Module.__call__``), residual adds in place, no dropout, no ``Step`` object.

``GPT.forward`` uses it when ``FastDecoder.why_not`` returns None: eval mode, gradients off, no autocast, not
under ``torch.compile``, every layer softmax attention with the "sdpa" kernel and pre-norm, every module of
the stock type (a LoRA-wrapped, quantized or swapped layer falls back) with no hooks, a decode state, one
token per row, no explicit mask or positions. Everything else takes the reference path, which stays the
readable definition; tests check that both give allclose logits (oneDNN sums in another order, ~1e-6) and
the same greedy tokens.
What it does not do: prefill (T > 1), sliding-window or recurrent layers, training, or touch the state_dict
(the weight copies live beside it and cost one extra copy of every matmul weight; ``clear()`` frees them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from nanoforge.core_model.attention.base import Attention
from nanoforge.core_model.attention.softmax import SoftmaxMixer, sdpa_kernel
from nanoforge.core_model.layers import MLP, RMSNorm, SwiGLU, apply_rope

if TYPE_CHECKING:
    from nanoforge.core_model.model import GPT, Block
    from nanoforge.core_model.state import ModelState

_NORMS = (RMSNorm, nn.LayerNorm)
_hooks = nn.modules.module  # holds the global forward hooks


Linear = Callable[[torch.Tensor], torch.Tensor]


def _onednn_ok() -> bool:
    """True when oneDNN's prepacked linear (what inductor uses on CPU) exists here and matches F.linear."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            w = torch.arange(24 * 16, dtype=torch.float32).reshape(24, 16).sin()  # no global RNG draw
            b, x = torch.linspace(-1, 1, 24), torch.arange(48, dtype=torch.float32).reshape(3, 16).cos()
            y = torch.ops.mkldnn._linear_pointwise(
                x, torch.ops.mkldnn._reorder_linear_weight(w, 8), b, "none", [], ""
            )
            _ONEDNN = torch.backends.mkldnn.is_available() and torch.allclose(y, F.linear(x, w, b), atol=1e-5)
        except (AttributeError, RuntimeError, NotImplementedError):
            _ONEDNN = False
    return _ONEDNN


_ONEDNN: bool | None = None


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, pack: bool) -> Linear:
    """``x -> x @ weight.T + bias`` for decode-sized inputs (B, in).

    With ``pack`` (fp32 on CPU, oneDNN present) the weight is copied once into oneDNN's blocked layout for
    small batches; its GEMM streams that layout about 1.5-2x faster than ``F.linear`` at 1-16 rows here,
    and the result differs from ``F.linear`` only by summation order (~1e-6 relative). Otherwise F.linear.
    """
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    if pack and weight.device.type == "cpu" and weight.dtype == torch.float32 and _onednn_ok():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)  # layout tuned for ~8 rows
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return lambda x: F.linear(x, weight, bias)


def _norm(module: nn.Module) -> Linear:
    """The norm's function; an fp32 RMSNorm as one fused ``F.rms_norm`` call with its weight (same result)."""
    w = module._parameters.get("weight")
    if isinstance(module, RMSNorm) and w is not None and w.dtype == torch.float32:
        shape, weight, eps = (w.shape[0],), w.detach(), module.eps
        return lambda x: F.rms_norm(x, shape, weight, eps)
    return module.forward


def _fused(mods: list[nn.Linear], pack: bool) -> Linear:
    """One linear computing the modules' outputs side by side (their weights concatenated row-wise)."""
    w = torch.cat([m.weight.detach() for m in mods])  # (sum of out widths, in)
    b = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])
    return make_linear(w, b, pack)


class _Layer:
    """One block's bound module functions and fused/packed linears, read by ``FastDecoder.step``."""

    def __init__(self, block: Block, pack: bool) -> None:
        # _expected_modules checked that the MLP is one of these two types before any _Layer is built
        attn, mlp = block.attn, cast("SwiGLU | MLP", block.mlp)
        self.norm1, self.norm2 = _norm(block.norm1), _norm(block.norm2)
        self.q_norm = attn.q_norm.forward if attn.qk_norm else None
        self.k_norm = attn.k_norm.forward if attn.qk_norm else None
        self.qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj], pack)  # -> (B, (nh + 2 nkv) * hd)
        self.o_proj = make_linear(attn.o_proj.weight, attn.o_proj.bias, pack)
        self.gated = isinstance(mlp, SwiGLU)
        if isinstance(mlp, SwiGLU):
            self.up = _fused([mlp.gate_proj, mlp.up_proj], pack)  # -> (B, 2 * d_mlp): gate | up
        else:
            self.up, self.act = make_linear(mlp.up_proj.weight, mlp.up_proj.bias, pack), mlp.act
        self.down = make_linear(mlp.down_proj.weight, mlp.down_proj.bias, pack)


def _expected_modules(model: GPT) -> list[tuple[nn.Module, str, tuple[type, ...]]]:
    """(parent, child name, accepted types) for every module the fast path reads or bypasses."""
    from nanoforge.core_model.model import Block

    out: list[tuple[nn.Module, str, tuple[type, ...]]] = [
        (model, "tok_emb", (nn.Embedding,)),
        (model, "norm_f", _NORMS),
        (model, "lm_head", (nn.Linear,)),
    ]
    for i, b in enumerate(model.block_list()):
        out += [(model.blocks, str(i), (Block,)), (b, "norm1", _NORMS), (b, "norm2", _NORMS)]
        out += [(b, "attn", (Attention,)), (b.attn, "mixer", (SoftmaxMixer,)), (b, "mlp", (SwiGLU, MLP))]
        out += [(b.attn, n, (nn.Linear,)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if b.attn.qk_norm:
            out += [(b.attn, "q_norm", (RMSNorm,)), (b.attn, "k_norm", (RMSNorm,))]
        gated = isinstance(b.mlp, SwiGLU)
        names = ("gate_proj", "up_proj", "down_proj") if gated else ("up_proj", "down_proj")
        out += [(b.mlp, n, (nn.Linear,)) for n in names]
    return out


class FastDecoder:
    """The lean decode step of one ``GPT``; see the module docstring for when it applies.

    Attributes:
        pack: copy the weights into oneDNN's prepacked layout (see ``make_linear``); False = F.linear on
            the fused weights only.
        calls: decode steps this path has served (tests and benchmarks read it).
    """

    def __init__(self, model: GPT, pack: bool = True) -> None:
        self.model = model
        self.pack = pack
        self.calls = 0
        self._tree: list[tuple[nn.Module, str, nn.Module]] | None = None  # (parent, name, child) when checked
        self._reason: str | None = None  # why the current module tree is not eligible
        self._params: list[tuple[nn.Module, str]] = []  # (module, name) of every parameter step() captures
        self._key: list[tuple[int, int, int]] = []  # (id, data_ptr, version) of those params when captured
        self._layers: list[_Layer] = []
        self._head: Linear | None = None
        self._norm_f: Linear | None = None

    def __getstate__(self) -> dict[str, object]:
        """Copies and pickles carry the model only: packed weights cannot be copied and are rebuilt on use."""
        return {"model": self.model, "pack": self.pack}

    def __setstate__(self, state: dict[str, object]) -> None:
        FastDecoder.__init__(self, cast("GPT", state["model"]), bool(state["pack"]))

    def clear(self) -> None:
        """Drop the fused/packed weight copies (they are rebuilt on the next fast decode step)."""
        self._layers, self._head, self._norm_f, self._key = [], None, None, []

    # ------------------------------------------------------------------------------------- eligibility
    def why_not(
        self,
        idx: torch.Tensor,
        state: ModelState | None,
        attention_mask: torch.Tensor | None,
        positions: torch.Tensor | None,
    ) -> str | None:
        """None when ``step`` may serve this forward call, else a short reason why it may not."""
        if state is None or idx.dim() != 2 or idx.shape[1] != 1:
            return "not a one-token decode step with a state"
        if attention_mask is not None or positions is not None:
            return "explicit attention_mask or positions"
        if self.model.training or torch.is_grad_enabled():
            return "training mode or gradients enabled"
        if torch.is_autocast_enabled(idx.device.type) or torch.compiler.is_compiling():
            return "autocast or torch.compile active"
        if _hooks._global_forward_hooks or _hooks._global_forward_pre_hooks:
            return "global module hooks registered"
        if self._tree is None or not self._tree_unchanged():
            self._reason = self._check_tree()
        return self._reason

    def _check_tree(self) -> str | None:
        """Record the module tree and say why it cannot take the fast path (None = it can)."""
        m, c = self.model, self.model.config
        self._tree = []
        self.clear()
        kinds = c.attention_kinds()
        if kinds != {"softmax"}:
            return f"attention kinds {sorted(kinds)}; the fast path covers softmax only"
        if c.norm_placement != "pre" or c.attention_options.get("kernel", "sdpa") != "sdpa":
            return "post-norm or the explicit 'math' attention kernel"
        expected = _expected_modules(m)
        self._tree = [(p, n, p._modules[n]) for p, n, _ in expected]  # type: ignore[misc]
        for (_, name, child), (_, _, types) in zip(self._tree, expected):
            if type(child) not in types or child._forward_hooks or child._forward_pre_hooks:
                return f"module {name} is a {type(child).__name__} or has hooks"
        if m._forward_hooks or m._forward_pre_hooks:
            return "the model has forward hooks"
        param_kinds = (nn.Linear, *_NORMS)
        self._params = [
            (child, n) for _, _, child in self._tree if type(child) in param_kinds for n in child._parameters
        ]
        return None

    def _tree_unchanged(self) -> bool:
        """True while no module was swapped and none gained hooks since ``_check_tree``."""
        assert self._tree is not None
        m = self.model
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        for parent, name, child in self._tree:
            if parent._modules.get(name) is not child or child._forward_hooks or child._forward_pre_hooks:
                return False
        return True

    # ----------------------------------------------------------------------------------- weight copies
    def _weights_key(self) -> list[tuple[int, int, int]]:
        """Identity, storage and in-place version of every captured parameter: a change means stale copies."""
        params = [mod._parameters[n] for mod, n in self._params]
        return [(id(p), p.data_ptr(), p._version) for p in params if p is not None]

    def _ensure_weights(self) -> None:
        """Build the fused/packed copies on first use and whenever a source parameter changed."""
        key = self._weights_key()
        if self._head is None or key != self._key:
            self._layers = [_Layer(b, self.pack) for b in self.model.block_list()]
            head = self.model.lm_head
            self._head = make_linear(head.weight, head.bias, self.pack)
            self._norm_f = _norm(self.model.norm_f)
            self._key = key

    # --------------------------------------------------------------------------------------------- step
    def step(self, idx: torch.Tensor, state: ModelState) -> torch.Tensor:
        """Logits (B, 1, V) for one new token per row (``idx``: (B, 1)), appended to ``state``."""
        m, c = self.model, self.model.config
        self._ensure_weights()
        assert self._head is not None and self._norm_f is not None
        B = idx.shape[0]
        nh, nkv, hd = c.n_head, c.kv_heads, c.head_size
        q_w, qk_w = nh * hd, (nh + nkv) * hd
        positions = state.next_pos[:, None].clone()  # (B, 1)
        m._check_positions(positions)
        slot, kv_len = state.reserve_one()  # slot None: rows are unaligned, each writes at its own length
        x = m.embed(idx, positions)[:, 0]  # (B, C)
        cos = sin = None
        if m.rotary is not None:
            cos, sin = m.rotary(positions)  # (B, 1, hd), shared by every layer
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, 1, hd)
        masked = state.padded or slot is None
        mask = state.valid[:, None, None, :kv_len] if masked else None  # (B, 1, 1, S)
        rows = torch.arange(B, device=idx.device) if slot is None else None
        for layer, cache in zip(self._layers, state.layers):
            qkv = layer.qkv(layer.norm1(x))  # (B, (nh + 2 nkv) * hd)
            qk = qkv[:, :qk_w].view(B, nh + nkv, 1, hd)  # (B, nh + nkv, 1, hd)
            v = qkv[:, qk_w:].view(B, nkv, hd)  # (B, nkv, hd)
            if layer.q_norm is not None and layer.k_norm is not None:
                qk = torch.cat([layer.q_norm(qk[:, :nh]), layer.k_norm(qk[:, nh:])], dim=1)
            if cos is not None and sin is not None:
                qk = apply_rope(qk, cos, sin)
            q, k = qk[:, :nh], qk[:, nh:, 0]  # (B, nh, 1, hd), (B, nkv, hd)
            k_cache, v_cache = cache["k"], cache["v"]  # (B, nkv, L, hd)
            if slot is not None:
                k_cache[:, :, slot] = k
                v_cache[:, :, slot] = v
            else:
                k_cache[rows, :, state.lengths] = k
                v_cache[rows, :, state.lengths] = v
            y = sdpa_kernel(
                q, k_cache[:, :, :kv_len], v_cache[:, :, :kv_len], mask, False, 0.0
            )  # (B,nh,1,hd)
            x += layer.o_proj(y.reshape(B, q_w))
            h = layer.norm2(x)
            if layer.gated:
                gate, up = layer.up(h).chunk(2, dim=-1)  # (B, d_mlp) x 2
                x += layer.down(F.silu(gate) * up)
            else:
                x += layer.down(layer.act(layer.up(h)))
        state.advance(None, 1)
        logits = self._head(self._norm_f(x)).float()  # (B, V)
        if c.logit_softcap is not None:
            logits = c.logit_softcap * torch.tanh(logits / c.logit_softcap)
        self.calls += 1
        return logits[:, None]  # (B, 1, V)
