"""Export our GPT to a HF checkpoint directory that ``transformers.AutoModelForCausalLM`` loads.

Two target layouts: ``llama`` (written as Mistral when every layer uses a sliding window) and ``gpt2``.
``arch=None`` picks GPT-2 when the config is GPT-2-shaped (LayerNorm, learned positions), else Llama.
A knob the target cannot represent (linear attention, post-norm, qk-norm, ...) raises ``ValueError`` naming
it, before anything is written. Files are written atomically: ``config.json``, ``model.safetensors``,
``generation_config.json``.
What it does not do: convert tokenizers, shard large models, or write anything but float tensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.hf.io import write_json_atomic, write_safetensors_atomic
from nanoforge.core_model.hf.registry import EXPORT_ARCHS


def default_arch(config: ModelConfig) -> str:
    """``"gpt2"`` for GPT-2-shaped configs (LayerNorm + learned positions), else ``"llama"``."""
    return "gpt2" if config.norm == "layernorm" and config.positions == "learned" else "llama"


def export_hf(
    model: torch.nn.Module,
    out_dir: str | os.PathLike[str],
    arch: str | None = None,
    generation: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a GPT) as a HF checkpoint in ``out_dir``; return the directory.

    Args:
        model: our GPT (its ``.config`` and ``state_dict()`` are used).
        out_dir: destination directory (created; existing files of the same names are replaced).
        arch: ``"llama"`` or ``"gpt2"``; None picks by shape (see ``default_arch``).
        generation: extra keys for ``generation_config.json`` (e.g. ``eos_token_id``).

    Raises:
        ValueError: unknown ``arch`` or a config knob that the target cannot represent.
    """
    config: ModelConfig = model.config  # type: ignore[assignment]
    arch = arch or default_arch(config)
    if arch not in EXPORT_ARCHS:
        raise ValueError(f"unknown export arch {arch!r}; accepted: {', '.join(EXPORT_ARCHS)}")
    family = EXPORT_ARCHS[arch]
    hf_config = family.config_to_hf(config)  # validates before any file is written
    state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    hf_state = family.weights_to_hf(state, config)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    write_safetensors_atomic(root / "model.safetensors", hf_state, metadata={"format": "pt"})
    write_json_atomic(root / "config.json", hf_config)
    write_json_atomic(root / "generation_config.json", {"_from_model_config": True, **(generation or {})})
    return root
