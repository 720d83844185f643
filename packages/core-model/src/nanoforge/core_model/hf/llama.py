"""HF Llama, Mistral and Qwen2 <-> nanoforge: config fields and weight names, in both directions.

The three families share one decoder layout (RMSNorm, SwiGLU MLP, RoPE in HF's rotate-half layout, optional
GQA), so one mapping serves all of them; they differ only in biases and sliding windows:

    Llama    attention_bias -> q/k/v/o biases; mlp_bias -> MLP biases; no sliding window
    Mistral  no biases; ``sliding_window`` on every layer (None = full attention)
    Qwen2    q/k/v biases (never o_proj); sliding window only if ``use_sliding_window``, per ``layer_types``

Our module names were chosen HF-like, so weights map by renaming alone, never by permuting:
``model.layers.{i}.self_attn.q_proj`` -> ``blocks.{i}.attn.q_proj`` and so on.
What it does not do: read files (``io.py``) or build the model (``registry.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.hf.rope import rope_from_hf, rope_to_hf

#: HF per-layer suffix -> our per-block suffix (weights and biases alike).
LAYER_NAMES: dict[str, str] = {
    "input_layernorm": "norm1",
    "post_attention_layernorm": "norm2",
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
#: Whole-model HF names -> ours.
TOP_NAMES: dict[str, str] = {
    "model.embed_tokens.weight": "tok_emb.weight",
    "model.norm.weight": "norm_f.weight",
    "lm_head.weight": "lm_head.weight",
}
#: Stored tensors that are derived buffers, not parameters (old checkpoints saved RoPE tables).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

_SILU_NAMES = ("silu", "swish")


def _require(hf: dict[str, Any], key: str) -> Any:
    if hf.get(key) is None:
        raise ValueError(f"HF config.json lacks required field {key!r}")
    return hf[key]


def _check_act(hf: dict[str, Any]) -> None:
    act = hf.get("hidden_act", "silu")
    if act not in _SILU_NAMES:
        raise ValueError(f"hidden_act={act!r} is not supported for {hf.get('model_type')}; accepted: silu")


def _sliding_layers(hf: dict[str, Any], model_type: str, n_layer: int) -> list[bool]:
    """Which layers use a sliding window, following each family's own rule."""
    window = hf.get("sliding_window")
    if model_type == "mistral":
        return [window is not None] * n_layer
    if model_type == "qwen2":
        if not hf.get("use_sliding_window", False) or window is None:
            return [False] * n_layer
        types = hf.get("layer_types")
        if types:
            return [t == "sliding_attention" for t in types]
        first = int(hf.get("max_window_layers", n_layer))
        return [i >= first for i in range(n_layer)]
    return [False] * n_layer


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Build our ``ModelConfig`` from a Llama / Mistral / Qwen2 ``config.json`` dict.

    Raises:
        ValueError: a required field is missing, or a setting has no equivalent here.
    """
    model_type = hf.get("model_type", "llama")
    _check_act(hf)
    n_layer = int(_require(hf, "num_hidden_layers"))
    n_head = int(_require(hf, "num_attention_heads"))
    d_model = int(_require(hf, "hidden_size"))
    n_kv = hf.get("num_key_value_heads")
    head_dim = hf.get("head_dim")
    rope_theta, rope_scaling = rope_from_hf(hf)
    if model_type == "qwen2":
        qkv_bias, out_bias, mlp_bias = True, False, False
    elif model_type == "mistral":
        qkv_bias, out_bias, mlp_bias = False, False, False
    else:
        qkv_bias = out_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
    sliding = _sliding_layers(hf, model_type, n_layer)
    if all(sliding):
        attention: str | tuple[str, ...] = "sliding"
    elif any(sliding):
        attention = tuple("sliding" if s else "softmax" for s in sliding)
    else:
        attention = "softmax"
    return ModelConfig(
        vocab_size=int(_require(hf, "vocab_size")),
        n_layer=n_layer,
        n_head=n_head,
        n_kv_head=None if n_kv in (None, n_head) else int(n_kv),
        d_model=d_model,
        head_dim=None if head_dim in (None, d_model // n_head) else int(head_dim),
        d_mlp=int(_require(hf, "intermediate_size")),
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        norm_placement="pre",
        positions="rope",
        max_seq_len=int(_require(hf, "max_position_embeddings")),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        mlp_bias=mlp_bias,
        norm_bias=False,
        attention=attention,
        sliding_window=int(hf["sliding_window"]) if any(sliding) else None,
    )


def weights_from_hf(hf_weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename HF tensors to our names. Unknown names raise; shapes are checked by the caller.

    Raises:
        ValueError: a tensor name this layout does not know (e.g. another architecture's checkpoint).
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, tensor in hf_weights.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        ours = _hf_name_to_ours(name)
        if ours is None:
            unknown.append(name)
        else:
            out[ours] = tensor
    if unknown:
        raise ValueError(f"unexpected tensors for a {config.n_layer}-layer Llama-style model: {unknown[:5]}")
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)  # tied: ours shares tok_emb's tensor
    return out


def _hf_name_to_ours(name: str) -> str | None:
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    prefix = "model.layers."
    if not name.startswith(prefix):
        return None
    index, _, rest = name[len(prefix) :].partition(".")
    stem, _, kind = rest.rpartition(".")  # kind: weight | bias
    if not index.isdigit() or stem not in LAYER_NAMES or kind not in ("weight", "bias"):
        return None
    return f"blocks.{index}.{LAYER_NAMES[stem]}.{kind}"


# ---------------------------------------------------------------------------------------------- export


def check_exportable(config: ModelConfig) -> None:
    """Raise ``ValueError`` naming the first knob a HF Llama/Mistral checkpoint cannot represent."""
    layer_kinds = set(config.attention) if isinstance(config.attention, tuple) else {config.attention}
    wrong: list[tuple[str, Any, str]] = [
        ("norm", config.norm, "rmsnorm"),
        ("mlp", config.mlp, "swiglu"),
        ("positions", config.positions, "rope"),
        ("norm_placement", config.norm_placement, "pre"),
        ("qk_norm", config.qk_norm, "False"),
        ("logit_softcap", config.logit_softcap, "None"),
    ]
    for knob, value, accepted in wrong:
        if str(value) != accepted:
            raise ValueError(f"cannot export to HF llama: {knob}={value!r}; accepted: {accepted}")
    if not layer_kinds <= {"softmax", "sliding"} or layer_kinds == {"softmax", "sliding"}:
        raise ValueError(
            f"cannot export to HF llama: attention={config.attention!r}; accepted: 'softmax' on every layer, "
            "or 'sliding' on every layer (exported as mistral)"
        )
    if "sliding" in layer_kinds and (config.qkv_bias or config.out_bias or config.mlp_bias):
        raise ValueError("cannot export to HF mistral: sliding attention with biases; accepted: no biases")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """HF ``config.json`` dict (llama, or mistral when every layer slides) for an exportable config."""
    check_exportable(config)
    sliding = config.attention == "sliding" or (
        isinstance(config.attention, tuple) and set(config.attention) == {"sliding"}
    )
    head_dim = config.head_dim or config.d_model // config.n_head
    hf: dict[str, Any] = {
        "model_type": "mistral" if sliding else "llama",
        "architectures": ["MistralForCausalLM" if sliding else "LlamaForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": _d_mlp(config),
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head or config.n_head,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "torch_dtype": "float32",
        **rope_to_hf(config.rope_theta, config.rope_scaling),
    }
    if sliding:
        hf["sliding_window"] = config.sliding_window
    else:
        # HF Llama has one switch for all four attention biases: a bias we lack is exported as zeros.
        hf["attention_bias"] = bool(config.qkv_bias or config.out_bias)
        hf["mlp_bias"] = bool(config.mlp_bias)
    return hf


def _d_mlp(config: ModelConfig) -> int:
    if config.d_mlp is not None:
        return int(config.d_mlp)
    return -(-int(8 / 3 * config.d_model) // 64) * 64  # the ModelConfig default for swiglu


def weights_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename our state dict to HF Llama names (adds zero o_proj/q/k/v biases when only some exist)."""
    ours_to_hf_top = {ours: hf for hf, ours in TOP_NAMES.items()}
    ours_to_hf_layer = {ours: hf for hf, ours in LAYER_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in ours_to_hf_top:
            out[ours_to_hf_top[name]] = tensor
            continue
        parts = name.split(".")
        if len(parts) < 4 or parts[0] != "blocks":
            raise ValueError(f"cannot export tensor {name!r} to HF llama")
        stem, kind = ".".join(parts[2:-1]), parts[-1]
        if stem not in ours_to_hf_layer:
            raise ValueError(f"cannot export tensor {name!r} to HF llama")
        out[f"model.layers.{parts[1]}.{ours_to_hf_layer[stem]}.{kind}"] = tensor
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
    if config.qkv_bias != config.out_bias:
        for i in range(config.n_layer):
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                key = f"model.layers.{i}.self_attn.{proj}"
                if f"{key}.bias" not in out:
                    out[f"{key}.bias"] = torch.zeros(out[f"{key}.weight"].shape[0])
    return out
