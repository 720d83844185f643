"""The registry of HF architectures we import/export, and the functions that turn a HF checkpoint into a GPT.

``FAMILIES`` maps a HF ``model_type`` to the four mapping functions of its family (config and weights, each
way). A HF directory is recognised by its ``model_type`` (or, failing that, ``architectures[0]``); anything
else is a ``ValueError`` listing what is supported. Adding an architecture = one module with the four
functions and one line here.
What it does not do: know any layout detail (``llama.py`` / ``gpt2.py``), or touch the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.hf import gpt2, llama
from nanoforge.core_model.hf.io import read_hf_weights, read_json
from nanoforge.core_model.model import GPT, build_model

#: The ``format`` value of our own checkpoint's config.json (see ``checkpoint.py``).
NATIVE_FORMAT = "nanoforge-model"


@dataclass(frozen=True)
class HFFamily:
    """The four conversions of one HF architecture family."""

    config_from_hf: Callable[[dict[str, Any]], ModelConfig]
    weights_from_hf: Callable[[dict[str, torch.Tensor], ModelConfig], dict[str, torch.Tensor]]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    weights_to_hf: Callable[[dict[str, torch.Tensor], ModelConfig], dict[str, torch.Tensor]]
    check_exportable: Callable[[ModelConfig], None]


LLAMA = HFFamily(
    llama.config_from_hf,
    llama.weights_from_hf,
    llama.config_to_hf,
    llama.weights_to_hf,
    llama.check_exportable,
)
GPT2 = HFFamily(
    gpt2.config_from_hf, gpt2.weights_from_hf, gpt2.config_to_hf, gpt2.weights_to_hf, gpt2.check_exportable
)

#: HF ``model_type`` -> family used to import it.
FAMILIES: dict[str, HFFamily] = {"llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "gpt2": GPT2}
#: HF ``architectures[0]`` -> ``model_type``, for config files that lack ``model_type``.
ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "GPT2LMHeadModel": "gpt2",
}
#: ``--arch`` names accepted by export -> family.
EXPORT_ARCHS: dict[str, HFFamily] = {"llama": LLAMA, "gpt2": GPT2}


def hf_model_type(hf_config: dict[str, Any]) -> str:
    """The registry key of a HF config dict.

    Raises:
        ValueError: the architecture is not one we import; the message lists the supported ones.
    """
    model_type = hf_config.get("model_type")
    if model_type is None:
        archs = hf_config.get("architectures") or []
        model_type = ARCHITECTURES.get(archs[0]) if archs else None
        shown = archs[0] if archs else None
    else:
        shown = model_type
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported HF architecture {shown!r}; supported model_type: {', '.join(FAMILIES)} "
            f"(architectures: {', '.join(ARCHITECTURES)})"
        )
    return str(model_type)


def import_hf_state(
    hf_config: dict[str, Any], hf_weights: dict[str, torch.Tensor]
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Convert a HF config dict and state dict into our ``ModelConfig`` and state dict (our names)."""
    family = FAMILIES[hf_model_type(hf_config)]
    config = family.config_from_hf(hf_config)
    return config, family.weights_from_hf(hf_weights, config)


def build_from_state(
    config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> GPT:
    """Build a GPT for ``config`` and load ``state`` into it, after checking names and shapes.

    Raises:
        ValueError: a tensor is missing, unexpected, or has the wrong shape (all named in the message).
    """
    model = build_model(config)
    expected = model.state_dict()
    state = dict(state)
    if config.tie_embeddings and "lm_head.weight" in expected and "tok_emb.weight" in state:
        state["lm_head.weight"] = state["tok_emb.weight"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"shape mismatch for {name}: checkpoint has {tuple(tensor.shape)}, "
                f"config expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    model.to(dtype)
    model.eval()
    return model


def load_hf_dir(model_dir: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> GPT:
    """Load a HF Llama / Mistral / Qwen2 / GPT-2 checkpoint directory as our GPT (eval mode).

    Raises:
        FileNotFoundError: no config.json or no weights.
        ValueError: unsupported architecture, corrupt files, or tensors that do not fit the config.
    """
    root = Path(model_dir)
    hf_config = read_json(root / "config.json")
    hf_model_type(hf_config)  # fail on the architecture before reading gigabytes of weights
    config, state = import_hf_state(hf_config, read_hf_weights(root))
    return build_from_state(config, state, dtype)


def from_hf_model(hf_model: Any, dtype: torch.dtype = torch.float32) -> GPT:
    """Convert an in-memory ``transformers`` causal-LM (Llama/Mistral/Qwen2/GPT-2) into our GPT."""
    hf_config = hf_model.config.to_dict()
    config, state = import_hf_state(hf_config, dict(hf_model.state_dict()))
    return build_from_state(config, {k: v.detach().clone() for k, v in state.items()}, dtype)


def is_native_dir(model_dir: str | os.PathLike[str]) -> bool:
    """True when ``model_dir/config.json`` is a nanoforge checkpoint (``"format": "nanoforge-model"``)."""
    path = Path(model_dir) / "config.json"
    return path.is_file() and read_json(path).get("format") == NATIVE_FORMAT


def load_any_model(model_dir: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> GPT:
    """Load our own checkpoint dir or a supported HF dir, whichever ``model_dir`` is."""
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"model directory {str(model_dir)!r} does not exist")
    if is_native_dir(model_dir):
        from nanoforge.core_model.checkpoint import load_model

        return load_model(model_dir).to(dtype).eval()
    return load_hf_dir(model_dir, dtype)
