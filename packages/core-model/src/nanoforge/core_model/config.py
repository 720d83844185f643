"""The architecture of a GPT as one frozen dataclass, validated on construction, JSON round-trippable.

What it does: holds every architectural knob (sizes, norm / MLP / position / attention kinds, RoPE scaling,
biases, regularisation), checks each against what is accepted and derives the resolved sizes
(``kv_heads``, ``head_size``, ``mlp_width``, ``layer_attention(i)``).
What it does not do: build modules (see ``model.build_model``) or know any tokenizer. The names accepted
for ``norm``/``mlp``/``positions``/``attention`` are the keys of the builder registries in ``layers`` and
``attention``; a test keeps the two lists identical.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Accepted names. Kept here (not imported from the registries) so that the config has no torch import;
# tests assert these equal the registry keys.
NORM_KINDS = ("layernorm", "rmsnorm")
MLP_KINDS = ("gelu", "gelu_tanh", "relu", "swiglu")
POSITION_KINDS = ("learned", "sinusoidal", "rope", "none")
PLACEMENTS = ("pre", "post")
ATTENTION_KINDS = ("softmax", "sliding", "linear", "performer", "linformer", "retnet")
# "ntk" is HF's "dynamic" NTK-aware scaling (theta grows with the current length); "dynamic" is an alias.
ROPE_SCALING_TYPES = ("linear", "ntk", "dynamic", "yarn", "llama3")
# Keys each rope_scaling type may carry besides "type"/"rope_type" (HF's names).
ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "ntk": ("factor",),
    "dynamic": ("factor",),
    "yarn": (
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "attention_factor",
        "mscale",
        "mscale_all_dim",
        "truncate",
    ),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
}
# Variant knobs accepted in attention_options, with what they mean.
ATTENTION_OPTIONS: dict[str, str] = {
    "kernel": "softmax math kernel: 'sdpa' (F.scaled_dot_product_attention, default) or 'math' (explicit)",
    "feature_map": "linear attention feature map: 'elu' (elu+1, default) or 'relu'",
    "performer_features": "number of FAVOR+ random features (default 2 * head_dim)",
    "performer_seed": "seed of the fixed random projection (default 0)",
    "linformer_k": "projected sequence length of Linformer keys/values (default 32)",
    "retnet_chunk": "chunk size of RetNet's chunkwise form used for long prefills (default 64)",
    "retnet_form": "RetNet form used for multi-token forward: 'parallel' (default) or 'chunkwise'",
}


def _round_up(x: int, multiple: int) -> int:
    return ((x + multiple - 1) // multiple) * multiple


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer. Every field is validated in ``__post_init__``.

    Example:
        >>> ModelConfig(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=64).head_size
        8
    """

    vocab_size: int  # number of token ids; pad to a multiple of 64 upstream for faster matmuls
    n_layer: int  # number of transformer blocks
    n_head: int  # number of query heads
    d_model: int  # residual stream width
    max_seq_len: int  # longest sequence (positions 0..max_seq_len-1); hard limit for learned positions
    n_kv_head: int | None = None  # key/value heads: None = n_head (MHA), 1 = MQA, else GQA (divides n_head)
    head_dim: int | None = None  # per-head width; None = d_model // n_head (HF allows it to differ)
    d_mlp: int | None = None  # MLP hidden width; None = 4*d_model (gelu/relu), 8/3*d_model up to x64 (swiglu)
    mlp: str = "gelu"  # one of MLP_KINDS
    norm: str = "layernorm"  # one of NORM_KINDS
    norm_eps: float = 1e-5  # epsilon inside the norm's sqrt
    norm_placement: str = "pre"  # "pre" (GPT-2/Llama: x + f(norm(x))) or "post" (original: norm(x + f(x)))
    positions: str = "learned"  # one of POSITION_KINDS
    rope_theta: float = 10000.0  # RoPE base wavelength
    rope_scaling: dict[str, Any] | None = None  # {"type": one of ROPE_SCALING_TYPES, "factor": ..., ...}
    tie_embeddings: bool = True  # lm_head.weight is tok_emb.weight (saved once)
    qkv_bias: bool = False  # bias on q/k/v projections (GPT-2, Qwen2: True)
    out_bias: bool = False  # bias on the attention output projection (GPT-2: True)
    mlp_bias: bool = False  # bias on MLP projections (GPT-2: True)
    norm_bias: bool = True  # LayerNorm has a bias (GPT-2: True); ignored by RMSNorm
    dropout: float = 0.0  # dropout on embeddings, attention probabilities and residual branches
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys before RoPE (OLMo-2, Qwen3)
    logit_softcap: float | None = None  # logits = cap * tanh(logits / cap) (Gemma-2); None = off
    attention: str | tuple[str, ...] = "softmax"  # one kind for all layers, or one per layer
    sliding_window: int | None = None  # tokens visible to a "sliding" layer (itself included)
    attention_options: dict[str, Any] = field(default_factory=dict)  # variant knobs, see ATTENTION_OPTIONS
    init_std: float = 0.02  # std of the normal init of linear/embedding weights

    def __post_init__(self) -> None:
        if isinstance(self.attention, list):  # JSON gives lists; keep the dataclass hashable-ish and frozen
            object.__setattr__(self, "attention", tuple(self.attention))
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        for name in ("n_kv_head", "head_dim", "d_mlp", "sliding_window"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if self.n_kv_head is not None and self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (1 = MQA, n_head = MHA, else GQA)"
            )
        if self.head_dim is None and self.d_model % self.n_head != 0:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; set head_dim explicitly"
            )
        _check_choice("mlp", self.mlp, MLP_KINDS)
        _check_choice("norm", self.norm, NORM_KINDS)
        _check_choice("norm_placement", self.norm_placement, PLACEMENTS)
        _check_choice("positions", self.positions, POSITION_KINDS)
        if self.positions == "rope" and self.head_size % 2 != 0:
            raise ValueError(f"head_dim={self.head_size} must be even for positions='rope'")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise ValueError(f"norm_eps={self.norm_eps!r} must be a positive finite float")
        if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            raise ValueError(f"rope_theta={self.rope_theta!r} must be a positive finite float")
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
        if self.logit_softcap is not None and not (self.logit_softcap > 0):
            raise ValueError(f"logit_softcap={self.logit_softcap!r} must be a positive float or None")
        if not (self.init_std > 0):
            raise ValueError(f"init_std={self.init_std!r} must be a positive float")
        self._check_rope_scaling()
        self._check_attention()

    # ----------------------------------------------------------------------------------------- validation
    def _check_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict):
            raise ValueError(
                f"rope_scaling={rs!r} must be a dict like {{'type': 'linear', 'factor': 2.0}} or None"
            )
        kind = rs.get("type", rs.get("rope_type"))
        kind = _check_choice("rope_scaling['type']", kind, ROPE_SCALING_TYPES)
        if self.positions != "rope":
            raise ValueError(f"rope_scaling={rs!r} needs positions='rope', got positions={self.positions!r}")
        allowed = {"type", "rope_type", *ROPE_SCALING_KEYS[kind]}
        unknown = sorted(set(rs) - allowed)
        if unknown:
            raise ValueError(
                f"rope_scaling has unknown keys {unknown} for type {kind!r}; accepted: {sorted(allowed)}"
            )
        factor = rs.get("factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 1.0:
            raise ValueError(f"rope_scaling['factor']={factor!r} must be a number >= 1")
        if kind == "llama3":
            for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if key not in rs:
                    raise ValueError(f"rope_scaling type 'llama3' needs key {key!r}; got keys {sorted(rs)}")
            if not rs["high_freq_factor"] > rs["low_freq_factor"]:
                raise ValueError(
                    f"rope_scaling high_freq_factor={rs['high_freq_factor']} must exceed "
                    f"low_freq_factor={rs['low_freq_factor']}"
                )

    def _check_attention(self) -> None:
        kinds = self.attention if isinstance(self.attention, tuple) else (self.attention,)
        if isinstance(self.attention, tuple) and len(self.attention) != self.n_layer:
            raise ValueError(
                f"attention has {len(self.attention)} entries but n_layer={self.n_layer}; "
                "give one name for all layers or exactly one per layer"
            )
        for kind in kinds:
            _check_choice("attention", kind, ATTENTION_KINDS)
        if "sliding" in kinds and self.sliding_window is None:
            raise ValueError("attention 'sliding' needs sliding_window (a positive int), got None")
        if not isinstance(self.attention_options, dict):
            raise ValueError(f"attention_options={self.attention_options!r} must be a dict")
        unknown = sorted(set(self.attention_options) - set(ATTENTION_OPTIONS))
        if unknown:
            raise ValueError(
                f"attention_options has unknown keys {unknown}; accepted: {sorted(ATTENTION_OPTIONS)}"
            )
        kernel = self.attention_options.get("kernel", "sdpa")
        _check_choice("attention_options['kernel']", kernel, ("sdpa", "math"))
        _check_choice(
            "attention_options['feature_map']",
            self.attention_options.get("feature_map", "elu"),
            ("elu", "relu"),
        )
        _check_choice(
            "attention_options['retnet_form']",
            self.attention_options.get("retnet_form", "parallel"),
            ("parallel", "chunkwise"),
        )
        for key in ("performer_features", "linformer_k", "retnet_chunk"):
            if key in self.attention_options:
                _check_positive_int(f"attention_options['{key}']", self.attention_options[key])

    # ------------------------------------------------------------------------------------ resolved sizes
    @property
    def kv_heads(self) -> int:
        """Number of key/value heads after resolving ``n_kv_head=None`` to ``n_head``."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_size(self) -> int:
        """Per-head width after resolving ``head_dim=None`` to ``d_model // n_head``."""
        return self.d_model // self.n_head if self.head_dim is None else self.head_dim

    @property
    def mlp_width(self) -> int:
        """MLP hidden width after resolving ``d_mlp=None`` (SwiGLU: 8/3 * d_model rounded up to 64)."""
        if self.d_mlp is not None:
            return self.d_mlp
        if self.mlp == "swiglu":
            return _round_up(int(8 * self.d_model / 3), 64)
        return 4 * self.d_model

    def layer_attention(self, layer: int) -> str:
        """The attention kind of layer ``layer`` (0-based)."""
        return self.attention[layer] if isinstance(self.attention, tuple) else self.attention

    def attention_kinds(self) -> frozenset[str]:
        """The distinct attention kinds used by the layers."""
        return (
            frozenset(self.attention) if isinstance(self.attention, tuple) else frozenset((self.attention,))
        )

    # ------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (tuples become lists)."""
        out = dataclasses.asdict(self)
        if isinstance(out["attention"], tuple):
            out["attention"] = list(out["attention"])
        return out

    @classmethod
    def from_dict(cls, data: object) -> ModelConfig:
        """Build a config from ``to_dict`` output; unknown keys are an error (a typo must not pass silently).

        ``data`` is typically parsed JSON, so anything that is not a dict is a ValueError too.
        """
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; accepted: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive int")


def _check_choice(name: str, value: Any, accepted: tuple[str, ...]) -> str:
    """``value`` when it is one of ``accepted`` (so a ``str``), else a ValueError naming both."""
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not supported; accepted: {', '.join(accepted)}")
    return value
