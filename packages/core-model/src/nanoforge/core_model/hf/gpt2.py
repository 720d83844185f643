"""HF GPT-2 <-> nanoforge: config fields and weight names, in both directions.

GPT-2 differs from the Llama family in four ways that matter here:
- its linear layers are ``Conv1D`` modules whose weight is stored (in, out), the transpose of ``nn.Linear``;
- q, k and v live in one fused ``c_attn`` tensor of width 3 * d_model, split here into our three projections;
- it has learned absolute positions (``wpe``), LayerNorm with bias, and ``gelu_new`` (the tanh GELU);
- the LM head is always tied to the token embedding.
Checkpoints come with (``transformer.h.0...``) or without (``h.0...``, the original OpenAI upload) the
``transformer.`` prefix, and old ones store the causal mask as ``attn.bias`` / ``attn.masked_bias``: both
are handled.
What it does not do: read files or build the model, or support GPT-2 variants' extra knobs
(``scale_attn_by_inverse_layer_idx``, ``reorder_and_upcast_attn``) — those raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import torch

from nanoforge.core_model.config import ModelConfig

#: HF activation names -> our ``mlp`` values.
ACTIVATIONS: dict[str, str] = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
_ACT_TO_HF: dict[str, str] = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

#: Per-layer Conv1D modules (weights stored transposed) other than the fused c_attn.
_CONV = {"attn.c_proj": "attn.o_proj", "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}
_NORMS = {"ln_1": "norm1", "ln_2": "norm2"}
_TOP = {
    "wte.weight": "tok_emb.weight",
    "wpe.weight": "pos_emb.weight",
    "ln_f.weight": "norm_f.weight",
    "ln_f.bias": "norm_f.bias",
}
_IGNORED = ("attn.bias", "attn.masked_bias")


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Build our ``ModelConfig`` from a GPT-2 ``config.json`` dict.

    Raises:
        ValueError: an activation or attention option this model does not implement.
    """
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(f"activation_function={act!r} is not supported; accepted: {', '.join(ACTIVATIONS)}")
    for knob in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf.get(knob):
            raise ValueError(f"GPT-2 option {knob}=True is not supported; accepted: False")
    if hf.get("scale_attn_weights", True) is False:
        raise ValueError("GPT-2 option scale_attn_weights=False is not supported; accepted: True")
    d_model = int(hf.get("n_embd", 768))
    return ModelConfig(
        vocab_size=int(hf.get("vocab_size", 50257)),
        n_layer=int(hf.get("n_layer", 12)),
        n_head=int(hf.get("n_head", 12)),
        n_kv_head=None,
        d_model=d_model,
        head_dim=None,
        d_mlp=int(hf.get("n_inner") or 4 * d_model),
        mlp=ACTIVATIONS[act],
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        norm_placement="pre",
        positions="learned",
        max_seq_len=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        norm_bias=True,
        attention="softmax",
    )


def weights_from_hf(hf_weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename, transpose (Conv1D) and split (c_attn) GPT-2 tensors into our state dict.

    Raises:
        ValueError: a tensor name GPT-2 does not have.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    d = config.d_model
    for full_name, tensor in hf_weights.items():
        name = full_name.removeprefix("transformer.")
        if name == "lm_head.weight":
            if not config.tie_embeddings:
                out["lm_head.weight"] = tensor
            continue
        if name in _TOP:
            out[_TOP[name]] = tensor
            continue
        parts = name.split(".")
        if parts[0] != "h" or len(parts) < 4 or not parts[1].isdigit():
            unknown.append(full_name)
            continue
        block, stem, kind = f"blocks.{parts[1]}", ".".join(parts[2:-1]), parts[-1]
        if ".".join(parts[2:]) in _IGNORED:
            continue
        if stem == "attn.c_attn":
            # Conv1D weight (d, 3d) -> three nn.Linear weights (d, d); bias (3d,) -> three (d,).
            pieces = tensor.t().split(d, dim=0) if kind == "weight" else tensor.split(d, dim=0)
            if len(pieces) != 3:
                raise ValueError(
                    f"{full_name} has shape {tuple(tensor.shape)}; expected 3 * n_embd = {3 * d}"
                )
            for proj, piece in zip(("q_proj", "k_proj", "v_proj"), pieces):
                out[f"{block}.attn.{proj}.{kind}"] = piece.contiguous()
        elif stem in _CONV:
            out[f"{block}.{_CONV[stem]}.{kind}"] = tensor.t().contiguous() if kind == "weight" else tensor
        elif stem in _NORMS:
            out[f"{block}.{_NORMS[stem]}.{kind}"] = tensor
        else:
            unknown.append(full_name)
    if unknown:
        raise ValueError(f"unexpected tensors for a GPT-2 model: {unknown[:5]}")
    return out


# ---------------------------------------------------------------------------------------------- export


def check_exportable(config: ModelConfig) -> None:
    """Raise ``ValueError`` naming the first knob a HF GPT-2 checkpoint cannot represent."""
    wrong: list[tuple[str, Any, str]] = [
        ("norm", config.norm, "layernorm"),
        ("norm_bias", config.norm_bias, "True"),
        ("positions", config.positions, "learned"),
        ("norm_placement", config.norm_placement, "pre"),
        ("attention", config.attention, "softmax"),
        ("n_kv_head", config.n_kv_head, f"None or {config.n_head}"),
        ("head_dim", config.head_dim, f"None or {config.d_model // config.n_head}"),
        ("qk_norm", config.qk_norm, "False"),
        ("logit_softcap", config.logit_softcap, "None"),
        ("tie_embeddings", config.tie_embeddings, "True"),
    ]
    for knob, value, accepted in wrong:
        if str(value) not in accepted.split(" or "):
            raise ValueError(f"cannot export to HF gpt2: {knob}={value!r}; accepted: {accepted}")
    if config.mlp not in _ACT_TO_HF:
        raise ValueError(f"cannot export to HF gpt2: mlp={config.mlp!r}; accepted: {', '.join(_ACT_TO_HF)}")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """HF GPT-2 ``config.json`` dict for an exportable config."""
    check_exportable(config)
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.d_mlp or 4 * config.d_model,
        "n_positions": config.max_seq_len,
        "activation_function": _ACT_TO_HF[config.mlp],
        "layer_norm_epsilon": config.norm_eps,
        "initializer_range": config.init_std,
        "tie_word_embeddings": True,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "torch_dtype": "float32",
    }


def weights_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> HF GPT-2 names: fuse q/k/v into c_attn, transpose Conv1D weights; missing biases
    (a bias-free model) are exported as zeros."""
    top = {ours: hf for hf, ours in _TOP.items()}
    out: dict[str, torch.Tensor] = {f"transformer.{top[k]}": v for k, v in state.items() if k in top}
    d = config.d_model
    for i in range(config.n_layer):
        b, h = f"blocks.{i}", f"transformer.h.{i}"

        def bias(name: str, size: int) -> torch.Tensor:
            return state.get(name, torch.zeros(size))

        qkv = [state[f"{b}.attn.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")]
        out[f"{h}.attn.c_attn.weight"] = torch.cat(qkv, dim=0).t()  # (d, 3d)
        out[f"{h}.attn.c_attn.bias"] = torch.cat(
            [bias(f"{b}.attn.{p}.bias", d) for p in ("q_proj", "k_proj", "v_proj")]
        )
        for hf_stem, ours in _CONV.items():
            weight = state[f"{b}.{ours}.weight"]
            out[f"{h}.{hf_stem}.weight"] = weight.t()  # Conv1D stores (in, out)
            out[f"{h}.{hf_stem}.bias"] = bias(f"{b}.{ours}.bias", weight.shape[0])
        for hf_stem, ours in _NORMS.items():
            out[f"{h}.{hf_stem}.weight"] = state[f"{b}.{ours}.weight"]
            out[f"{h}.{hf_stem}.bias"] = state[f"{b}.{ours}.bias"]
    return out
