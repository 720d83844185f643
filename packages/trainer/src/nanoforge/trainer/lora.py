"""Our own minimal LoRA: a ``LoRALinear`` wrapping ``nn.Linear``, injected by swapping modules by name.

LoRA (Hu et al., 2021) freezes a pretrained weight ``W`` (out x in) and learns a low-rank update:

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r)

``A`` starts Kaiming-uniform and ``B`` at zero, so the wrapped layer starts out computing exactly what the
base layer did. ``merge`` folds ``(alpha / r) * B A`` into ``W`` (no extra cost at inference), ``unmerge``
takes it out again. ``inject_lora`` is the torchtune-style builder swap: every ``nn.Linear`` whose module
name matches one of ``target_modules`` (``q_proj`` matches ``blocks.0.attn.q_proj``, as in peft) is replaced
by a ``LoRALinear`` around it; nothing inside the attention code knows about LoRA.

Files are PEFT's format, so peft and this module read each other's adapters:
``adapter_config.json`` + ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` / ``...lora_B.weight`` (parameter names of peft's LoRA layer,
without the adapter name).

Trainable token rows (peft's ``trainable_token_indices``): ``inject_token_rows`` lets a few rows of the
token embedding (and of the LM head) train with the adapter — the chat special tokens that never occurred in
pretraining. A ``TokenRows`` holds the *new values* of the chosen rows (peft calls them
``trainable_tokens_delta``, but they replace the rows rather than add to them); the embedding / head computes
with ``W.index_copy(0, ids, rows)``. When ``lm_head`` is tied to ``tok_emb`` both wrappers share one
``TokenRows``, so input and output rows stay equal, and the file holds only ``tok_emb``'s rows (as peft
writes for tied models); untied, each layer has its own. Keys:
``base_model.model.tok_emb.token_adapter.trainable_tokens_delta``, config
``"trainable_token_indices": {"tok_emb": [ids...]}`` (+ ``"lm_head"`` when untied).

What it does not do: several adapters at once, DoRA / rsLoRA / bias training, quantized bases (use peft
for those; ``adapters.py`` offers both behind one interface).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nanoforge.core_model.checkpoint import atomic_write_bytes, atomic_write_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
TOKEN_ROWS_KEY = "token_adapter.trainable_tokens_delta"  # peft's saved name under the wrapped layer


class LoRALinear(nn.Module):
    """``base(x) + scaling * lora_B(lora_A(dropout(x)))`` with the base layer frozen.

    Args:
        base: the pretrained linear layer (kept as ``self.base_layer``, frozen).
        r: rank of the update (> 0).
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the LoRA branch's input (0 = none).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r={r} must be a positive int")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout={dropout} must be in [0, 1)")
        self.base_layer = base
        self.base_layer.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        w = base.weight
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform (as nn.Linear's default init), B = 0: the update starts at exactly zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A`` with the base weight's shape (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, r) @ (r, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        update = self.lora_B(self.lora_A(self.lora_dropout(x)))  # (..., r) -> (..., out)
        return out + update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (idempotent)."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (idempotent)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def matches(name: str, targets: Sequence[str]) -> bool:
    """peft's rule for a list of target names: the module name equals a target or ends with ``.target``.

    Example: ``matches("blocks.0.attn.q_proj", ["q_proj"])`` -> True; ``["proj"]`` -> False.
    """
    return any(name == t or name.endswith(f".{t}") for t in targets)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def inject_lora(
    model: nn.Module, target_modules: Sequence[str], r: int, alpha: float, dropout: float = 0.0
) -> list[str]:
    """Freeze ``model`` and wrap every matching ``nn.Linear`` in a ``LoRALinear``; returns the wrapped names.

    Raises:
        ValueError: no linear layer matches (names the linear layers that exist).
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [n for n in linears if matches(n, target_modules)]
    if not chosen:
        leaves = sorted({n.rpartition(".")[2] for n in linears})
        raise ValueError(
            f"LoRA target_modules {list(target_modules)} match no nn.Linear in the model; accepted: {', '.join(leaves)}"
        )
    model.requires_grad_(False)
    for name in chosen:
        parent, child = _parent(model, name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Module name -> ``LoRALinear`` for every injected layer."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer and token-row layer into its base weight (outputs unchanged)."""
    layers: list[LoRALinear | TokenRowsLayer] = [
        *lora_layers(model).values(),
        *token_row_layers(model).values(),
    ]
    for layer in layers:
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo ``merge_lora``."""
    layers: list[LoRALinear | TokenRowsLayer] = [
        *lora_layers(model).values(),
        *token_row_layers(model).values(),
    ]
    for layer in layers:
        layer.unmerge()


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every ``LoRALinear`` / token-row wrapper by its base layer (merged first when ``merge``).

    Returns ``model``.
    """
    layers: dict[str, LoRALinear | TokenRowsLayer] = {**lora_layers(model), **token_row_layers(model)}
    for name, layer in layers.items():
        if merge:
            layer.merge()
        parent, child = _parent(model, name)
        setattr(parent, child, layer.base_layer)
    model.requires_grad_(True)
    return model


# ------------------------------------------------------------------------------------ trainable token rows
class TokenRows(nn.Module):
    """Trainable new values for rows ``ids`` of a (vocab, d) weight, and the originals (for ``unmerge``).

    Args:
        weight: the embedding / head weight the rows come from (vocab, d).
        ids: distinct row indices, each in ``[0, vocab)``.
    """

    ids: torch.Tensor  # (n,) long, a buffer
    original: torch.Tensor  # (n, d), a buffer

    def __init__(self, weight: torch.Tensor, ids: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("ids", torch.tensor(list(ids), dtype=torch.long, device=weight.device))
        self.rows = nn.Parameter(weight.detach()[self.ids].clone())  # (n, d), starts equal to the originals
        self.register_buffer("original", weight.detach()[self.ids].clone())  # (n, d)

    def replace_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with the chosen rows replaced (differentiable in ``rows``)."""
        return weight.index_copy(0, self.ids, self.rows.to(weight.dtype))


class TokenRowsLayer(nn.Module):
    """An ``nn.Embedding`` or ``nn.Linear`` (the LM head) computing with ``token_rows.replace_rows(base.weight)``.

    ``weight`` reads the adapted weight, so code that inspects ``tok_emb.weight`` (device, dtype) still works.
    """

    def __init__(self, base: nn.Embedding | nn.Linear, token_rows: TokenRows) -> None:
        super().__init__()
        self.base_layer = base
        self.token_adapter = token_rows  # peft's attribute name, so state-dict paths read alike
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        w = self.base_layer.weight
        return w if self.merged else self.token_adapter.replace_rows(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.merged:
            return base(x)
        if isinstance(base, nn.Embedding):
            return F.embedding(x, self.weight, base.padding_idx)  # (B, T) -> (B, T, d)
        return F.linear(x, self.weight, base.bias)  # (B, T, d) -> (B, T, vocab)

    @torch.no_grad()
    def merge(self) -> None:
        """Write the rows into the base weight (idempotent; a tied pair writes the same values twice)."""
        if not self.merged:
            t = self.token_adapter
            self.base_layer.weight.index_copy_(0, t.ids, t.rows.to(self.base_layer.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original rows back (idempotent)."""
        if self.merged:
            t = self.token_adapter
            self.base_layer.weight.index_copy_(0, t.ids, t.original.to(self.base_layer.weight.dtype))
            self.merged = False


def check_token_ids(ids: Sequence[int], vocab_size: int, what: str = "lora.trainable_tokens") -> list[int]:
    """The ids as a list of ints, each in ``[0, vocab_size)`` and listed once.

    Example: ``check_token_ids([5, 3], 64) -> [5, 3]``; ``[64]`` -> ValueError naming 64 and vocab_size=64.
    """
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise ValueError(
                f"{what}: token id {i!r} is not in the model's vocabulary (vocab_size={vocab_size}); "
                f"accepted: ints 0..{vocab_size - 1}"
            )
        if i in out:
            raise ValueError(f"{what}: token id {i} is listed twice; list each id once")
        out.append(i)
    if not out:
        raise ValueError(f"{what}: no token ids given; list at least one id")
    return out


def is_tied(model: nn.Module) -> bool:
    """True when the GPT's ``lm_head.weight`` is its ``tok_emb.weight``."""
    return _base_weight(model, "lm_head") is _base_weight(model, "tok_emb")


def _base_weight(model: nn.Module, name: str) -> torch.Tensor:
    mod = model.get_submodule(name)
    return (mod.base_layer if isinstance(mod, TokenRowsLayer) else mod).weight  # type: ignore[return-value]


def inject_token_rows(model: nn.Module, layers: Mapping[str, Sequence[int]]) -> list[str]:
    """Let rows ``ids`` of each named layer (``tok_emb`` / ``lm_head``) train; returns the wrapped names.

    With tied embeddings, ``lm_head`` shares ``tok_emb``'s ``TokenRows`` (give ``tok_emb`` only; an
    ``lm_head`` entry is an error). Untied, a layer not listed keeps its rows frozen.

    Raises:
        ValueError: a layer other than tok_emb / lm_head, an id out of range or repeated, or lm_head listed
            on a tied model.
    """
    unknown = sorted(set(layers) - {"tok_emb", "lm_head"})
    if unknown:
        raise ValueError(f"trainable token rows for layers {unknown}; accepted: tok_emb, lm_head")
    vocab = _base_weight(model, "tok_emb").shape[0]
    tied = is_tied(model)
    if tied and "lm_head" in layers:
        raise ValueError(
            "lm_head is tied to tok_emb in this model; list trainable token ids for tok_emb only (they train both)"
        )
    wrapped = []
    for name, ids in layers.items():
        base = model.get_submodule(name)
        if type(base) not in (nn.Embedding, nn.Linear):
            raise ValueError(
                f"{name} is a {type(base).__name__}; trainable token rows need a plain nn.Embedding / nn.Linear "
                "(do not target it with LoRA as well)"
            )
        rows = TokenRows(base.weight, check_token_ids(ids, vocab))  # type: ignore[arg-type]
        parent, child = _parent(model, name)
        setattr(parent, child, TokenRowsLayer(base, rows))  # type: ignore[arg-type]
        wrapped.append(name)
        if tied:  # the head reads the same (vocab, d) weight: give it the same rows
            parent, child = _parent(model, "lm_head")
            setattr(parent, child, TokenRowsLayer(model.get_submodule("lm_head"), rows))  # type: ignore[arg-type]
            wrapped.append("lm_head")
    return wrapped


def token_row_layers(model: nn.Module) -> dict[str, TokenRowsLayer]:
    """Module name -> ``TokenRowsLayer`` for every wrapped embedding / head."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TokenRowsLayer)}


def token_row_indices(model: nn.Module) -> dict[str, list[int]]:
    """peft's ``trainable_token_indices`` for the model: ``{layer: ids}``, a tied head left out."""
    out: dict[str, list[int]] = {}
    seen: set[int] = set()
    for name, layer in token_row_layers(model).items():
        if id(layer.token_adapter) not in seen:
            seen.add(id(layer.token_adapter))
            out[name] = layer.token_adapter.ids.tolist()
    return out


# ------------------------------------------------------------------------------------ PEFT-format files
def _adapter_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """peft's saved key -> the parameter it holds: LoRA factors, then token rows (a tied head left out)."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
    rows = token_row_layers(model)
    for name in token_row_indices(model):
        out[f"{PEFT_PREFIX}{name}.{TOKEN_ROWS_KEY}"] = rows[name].token_adapter.rows
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights under peft's saved key names (``base_model.model.<module>.lora_A.weight``, ...)."""
    return {k: p.detach().cpu().contiguous() for k, p in _adapter_params(model).items()}


def peft_config_dict(
    target_modules: Iterable[str],
    r: int,
    alpha: float,
    dropout: float,
    base_model: str | None = None,
    trainable_token_indices: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """The ``adapter_config.json`` fields peft needs for a LoRA adapter (its defaults for the rest)."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "trainable_token_indices": trainable_token_indices or None,
    }


def save_adapter(
    model: nn.Module, directory: str | os.PathLike[str], target_modules: Sequence[str], base_model: str | None
) -> Path:
    """Write the injected adapter (LoRA factors + token rows) in PEFT's format, both files atomic.

    Returns the directory.

    Raises:
        ValueError: the model has no LoRA layers.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers to save; call inject_lora first")
    first = next(iter(layers.values()))
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / ADAPTER_WEIGHTS, st_save(adapter_state_dict(model)))
    cfg = peft_config_dict(
        target_modules, first.r, first.alpha, dropout, base_model, token_row_indices(model) or None
    )
    atomic_write_json(out / ADAPTER_CONFIG, cfg)
    return out


def token_indices_of(cfg: dict[str, Any], where: str) -> dict[str, list[int]]:
    """``trainable_token_indices`` of an adapter config as ``{layer: ids}`` (a bare list = ``tok_emb``).

    Raises:
        ValueError: not a list of ints or a mapping of layer name -> list of ints.
    """
    raw = cfg.get("trainable_token_indices")
    if raw is None:
        return {}
    layers = {"tok_emb": raw} if isinstance(raw, list) else raw
    if not isinstance(layers, dict) or not all(
        isinstance(ids, list) and all(isinstance(i, int) for i in ids) for ids in layers.values()
    ):
        raise ValueError(
            f"{where}: trainable_token_indices={raw!r}; accepted: a list of token ids or "
            '{"tok_emb": [ids], "lm_head": [ids]}'
        )
    return {str(k): list(v) for k, v in layers.items()}


def read_adapter_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``adapter_config.json`` of a PEFT LoRA adapter.

    Raises:
        ValueError: missing / corrupt file, not a LoRA adapter, or options this layer does not implement.
    """
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise ValueError(
            f"{path}: not found; an adapter directory holds {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}"
        )
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt adapter config ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ValueError(
            f"{path}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else None!r}; accepted: LORA"
        )
    unsupported = {k: cfg.get(k) for k in ("use_dora", "use_rslora", "fan_in_fan_out") if cfg.get(k)}
    if cfg.get("bias", "none") != "none":
        unsupported["bias"] = cfg["bias"]
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        unsupported["rank_pattern/alpha_pattern"] = "set"
    if unsupported:
        raise ValueError(
            f"{path}: options {unsupported} are not supported by nanoforge.trainer.lora; load it with peft"
        )
    targets = cfg.get("target_modules")
    if isinstance(targets, str) or not targets:
        raise ValueError(f"{path}: target_modules={targets!r}; accepted: a non-empty list of module names")
    token_indices_of(cfg, str(path))
    return cfg


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> list[str]:
    """Inject LoRA layers (and token rows) as ``adapter_config.json`` says and load the weights into them.

    Works for adapters written by ``save_adapter`` and by peft's ``save_pretrained``. Returns the wrapped names.

    Raises:
        ValueError: bad config (see ``read_adapter_config``), missing/corrupt weights, missing or
            mis-shaped tensors.
    """
    cfg = read_adapter_config(directory)
    path = Path(directory) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ValueError(f"{path}: adapter weights not found")
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupt safetensors file ({e})") from e
    names = inject_lora(
        model,
        cfg["target_modules"],
        int(cfg["r"]),
        float(cfg["lora_alpha"]),
        float(cfg.get("lora_dropout", 0.0)),
    )
    token_layers = token_indices_of(cfg, str(Path(directory) / ADAPTER_CONFIG))
    if token_layers:
        names += inject_token_rows(model, token_layers)
    expected = _adapter_params(model)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{path}: adapter lacks tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    with torch.no_grad():
        for key, param in expected.items():
            if tensors[key].shape != param.shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(tensors[key].shape)}, the model needs {tuple(param.shape)}"
                )
            param.copy_(tensors[key])
    return names
