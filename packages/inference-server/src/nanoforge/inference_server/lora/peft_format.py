"""Read a LoRA adapter saved in PEFT's on-disk format and map its module names onto our GPT.

What it does: reads ``adapter_config.json`` (``peft_type`` LORA, ``r``, ``lora_alpha``, ``use_rslora``,
``rank_pattern`` / ``alpha_pattern``) and ``adapter_model.safetensors`` (safetensors only: never a pickle),
strips PEFT's ``base_model.model.`` prefix and an adapter name inside the key if present, maps HF Llama /
Mistral / Qwen2 layer names (``model.layers.N.self_attn.q_proj``) to ours (``blocks.N.attn.q_proj``), and
returns ``{module name: LoRAWeights}`` with scale ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), plus
the trainable token rows of ``trainable_token_indices`` (``<layer>.token_adapter.trainable_tokens_delta``:
the new values of those rows) as ``{"tok_emb" | "lm_head": TokenRowWeights}``.
What it does not do: DoRA, embedding LoRA, fan-in-fan-out (GPT-2 Conv1D) layouts or other PEFT methods;
each is refused with a clear error. It does not touch the model (``adapters`` does).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from nanoforge.inference_server.lora.linear import LoRAWeights
from nanoforge.inference_server.lora.token_rows import TokenRowWeights

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
#: HF decoder names -> ours (``model.layers.N.`` prefix and per-layer suffixes).
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_SUFFIX = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.[^.]+)?\.weight$")
_ROWS_KEY = re.compile(r"^(?P<module>.+)\.token_adapter\.trainable_tokens_delta(?:\.[^.]+)?$")
#: embedding / head names (ours, HF) -> ours
_TOKEN_LAYERS = {
    "tok_emb": "tok_emb",
    "embed_tokens": "tok_emb",
    "model.embed_tokens": "tok_emb",
    "lm_head": "lm_head",
}


def token_indices(cfg: dict[str, Any], where: str) -> dict[str, list[int]]:
    """``trainable_token_indices`` as ``{"tok_emb" | "lm_head": ids}`` (a bare list = the input embedding).

    Raises:
        ValueError: a malformed value or a layer other than the token embedding / LM head.
    """
    raw = cfg.get("trainable_token_indices")
    if raw is None:
        return {}
    layers = {"tok_emb": raw} if isinstance(raw, list) else raw
    if not isinstance(layers, dict) or not all(
        isinstance(ids, list) and all(isinstance(i, int) for i in ids) for ids in layers.values()
    ):
        raise ValueError(
            f"{where}: trainable_token_indices={raw!r}; accepted: a list of ids or {{layer: [ids]}}"
        )
    out = {}
    for name, ids in layers.items():
        ours = _TOKEN_LAYERS.get(our_module_name(name), _TOKEN_LAYERS.get(name))
        if ours is None:
            raise ValueError(
                f"{where}: trainable token rows for layer {name!r}; accepted: {', '.join(sorted(_TOKEN_LAYERS))}"
            )
        out[ours] = ids
    return out


def our_module_name(name: str) -> str:
    """A PEFT key's module path -> our module name (HF Llama-family names mapped, ours kept)."""
    for prefix in ("base_model.model.", "base_model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    m = _HF_LAYER.match(name)
    if m and m.group(2) in _HF_SUFFIX:
        return f"blocks.{m.group(1)}.{_HF_SUFFIX[m.group(2)]}"
    return name


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.search(rf"(^|\.){key}$", module) or module.endswith(key):
            return value
    return default


def read_config(path: Path) -> dict[str, Any]:
    """Load and check ``adapter_config.json``. Raises FileNotFoundError / ValueError naming the problem."""
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path} is not a PEFT adapter directory: {CONFIG_FILE} is missing")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_path}: peft_type={cfg.get('peft_type')!r} is not supported; accepted: 'LORA'")
    for flag in ("use_dora", "fan_in_fan_out"):
        if cfg.get(flag):
            raise ValueError(f"{cfg_path}: {flag}=true is not supported; accepted: false")
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"{cfg_path}: r={r!r} must be an int >= 1")
    return cfg


def read_adapter(
    path: str | Path,
) -> tuple[dict[str, LoRAWeights], dict[str, TokenRowWeights], dict[str, Any]]:
    """Read a PEFT LoRA adapter directory.

    Returns:
        ``({our module name: LoRAWeights}, {"tok_emb" | "lm_head": TokenRowWeights}, adapter_config)``.

    Raises:
        FileNotFoundError: missing directory / config / safetensors file. ValueError: unsupported or
        inconsistent content (the message names the key or field).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"adapter directory {str(path)!r} does not exist")
    cfg = read_config(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        found = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"{path}: {WEIGHTS_FILE} is missing (found {found}); only safetensors is read"
        )
    tensors = load_file(str(weights_path))
    ids = token_indices(cfg, str(path / CONFIG_FILE))
    factors: dict[str, dict[str, Any]] = {}
    rows: dict[str, TokenRowWeights] = {}
    for key, t in tensors.items():
        m, r = _KEY.match(key), _ROWS_KEY.match(key)
        if r is not None:
            layer = _TOKEN_LAYERS.get(our_module_name(r.group("module")))
            if layer not in ids:
                raise ValueError(
                    f"{weights_path}: token rows {key!r} for a layer trainable_token_indices does not list "
                    f"({sorted(ids)})"
                )
            rows[layer] = TokenRowWeights(torch.tensor(ids[layer], dtype=torch.long), t.float().contiguous())
            continue
        if m is None:
            raise ValueError(
                f"{weights_path}: tensor {key!r} is not a LoRA factor (*.lora_A.weight / *.lora_B.weight) or "
                "trainable token rows; embedding LoRA and extra saved modules are not supported"
            )
        factors.setdefault(our_module_name(m.group("module")), {})[m.group("which")] = t.float()
    missing = sorted(set(ids) - set(rows))
    if missing:
        raise ValueError(
            f"{weights_path}: trainable_token_indices lists {missing} but the file has no rows for it"
        )
    if not factors and not rows:
        raise ValueError(f"{weights_path}: no LoRA tensors found")
    out: dict[str, LoRAWeights] = {}
    for module, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{weights_path}: module {module!r} has lora_{''.join(ab)} but not both A and B")
        r = ab["A"].shape[0]
        alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", r)))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = LoRAWeights(A=ab["A"].contiguous(), B=ab["B"].contiguous(), scale=scale)
    return out, rows, cfg


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "our_module_name", "read_adapter", "read_config", "token_indices"]
