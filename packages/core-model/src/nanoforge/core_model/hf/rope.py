"""Translate RoPE settings between HF ``config.json`` and our ``ModelConfig`` (``rope_theta`` + ``rope_scaling``).

HF writes RoPE settings two ways: transformers < 5 uses top-level ``rope_theta`` and ``rope_scaling``
(``{"type" or "rope_type": ..., "factor": ...}``); transformers >= 5 uses one ``rope_parameters`` dict that
also carries ``rope_theta``. Both are read here; export writes the old layout, which both versions load.
What it does not do: compute frequencies (that is ``layers.py``), or accept RoPE types our model lacks —
those raise ``ValueError`` naming the type and the supported ones.
"""

from __future__ import annotations

from typing import Any

#: HF rope type -> our ``rope_scaling["type"]``. "default" means no scaling.
HF_TO_OURS: dict[str, str] = {"linear": "linear", "dynamic": "ntk", "yarn": "yarn", "llama3": "llama3"}
OURS_TO_HF: dict[str, str] = {ours: hf for hf, ours in HF_TO_OURS.items()}

#: Keys of a HF rope dict that carry no scaling information and are not copied.
_HF_BOOKKEEPING = {"type", "rope_type", "rope_theta", "partial_rotary_factor"}


def rope_from_hf(hf: dict[str, Any], default_theta: float = 10000.0) -> tuple[float, dict[str, Any] | None]:
    """Return ``(rope_theta, rope_scaling)`` for our config from a HF config dict (old or new layout).

    Example: ``{"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}``
    -> ``(10000.0, {"type": "linear", "factor": 2.0})``.

    Raises:
        ValueError: unsupported RoPE type, or partial rotary embeddings (not modelled).
    """
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and any(isinstance(v, dict) for v in params.values()):
        raise ValueError(
            "per-layer-type rope_parameters are not supported; accepted: one dict for all layers"
        )
    merged: dict[str, Any] = dict(hf.get("rope_scaling") or {})
    if isinstance(params, dict):
        merged.update(params)
    theta = float(merged.get("rope_theta", hf.get("rope_theta", default_theta)))
    partial = merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ValueError(f"partial_rotary_factor={partial} is not supported; accepted: 1.0 (full rotary)")
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type == "default":
        return theta, None
    if rope_type not in HF_TO_OURS:
        raise ValueError(
            f"unsupported rope type {rope_type!r}; accepted: default, {', '.join(sorted(HF_TO_OURS))}"
        )
    scaling: dict[str, Any] = {"type": HF_TO_OURS[rope_type]}
    for key, value in merged.items():
        if key not in _HF_BOOKKEEPING and value is not None:
            scaling[key] = value
    if rope_type in ("yarn", "llama3"):
        # HF defaults original_max_position_embeddings to max_position_embeddings for these types.
        scaling.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    return theta, scaling


def rope_to_hf(rope_theta: float, rope_scaling: dict[str, Any] | None) -> dict[str, Any]:
    """Return the HF config keys (``rope_theta``, ``rope_scaling``) for our RoPE settings.

    Raises:
        ValueError: a scaling type HF has no equivalent for.
    """
    out: dict[str, Any] = {"rope_theta": float(rope_theta), "rope_scaling": None}
    if rope_scaling:
        ours = rope_scaling.get("type")
        if ours not in OURS_TO_HF:
            raise ValueError(
                f"rope_scaling type {ours!r} cannot be exported to HF; accepted: {', '.join(sorted(OURS_TO_HF))}"
            )
        scaling = {k: v for k, v in rope_scaling.items() if k != "type"}
        scaling["rope_type"] = OURS_TO_HF[ours]
        scaling["type"] = OURS_TO_HF[ours]  # transformers < 4.45 reads "type"
        out["rope_scaling"] = scaling
    return out
