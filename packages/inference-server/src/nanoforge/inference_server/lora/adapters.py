"""The adapters loaded into one served model: wraps targeted modules and routes batch rows to adapters.

What it does: ``AdapterSet(model)`` keeps ``{name: info}``; ``add(name, dir)`` reads a PEFT adapter, wraps
each targeted module of ``model`` in a ``MultiLoRALinear`` the first time any adapter targets it (a swap
on the parent module, by name) and attaches the factors; ``remove(name)`` detaches them (wrappers stay, and
cost one dict lookup when unused). An adapter with trainable token rows also gets ``tok_emb`` / ``lm_head``
wrapped in a ``MultiTokenRows`` (a tied head takes the embedding's rows), so those rows too apply per batch
row. ``route(names)`` is the engine's per-forward hook: row i uses ``names[i]``. ``cache_salt(name)`` separates prefix-cache entries per adapter *and* per load, so a replaced
adapter never reuses the old one's cached K/V.
What it does not do: thread safety (call ``add`` / ``remove`` on the engine thread, between iterations:
``Engine.run_exclusive``) or request bookkeeping (``text.ServingModel`` refuses to unload an adapter in use).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from nanoforge.inference_server.lora.linear import LoRARouting, MultiLoRALinear
from nanoforge.inference_server.lora.peft_format import read_adapter
from nanoforge.inference_server.lora.token_rows import MultiTokenRows, TokenRowWeights


class AdapterSet:
    """LoRA adapters attached to ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.routing = LoRARouting()
        self.infos: dict[str, dict[str, Any]] = {}
        self._salts: dict[str, str] = {}
        self._loads = itertools.count(1)
        self._device = next(model.parameters()).device
        emb, head = getattr(model, "tok_emb", None), getattr(model, "lm_head", None)
        self._tied = emb is not None and getattr(head, "weight", None) is getattr(emb, "weight", 0)

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        """Loaded adapter names, sorted."""
        return sorted(self.infos)

    def _wrapper(self, module_name: str) -> MultiLoRALinear:
        try:
            mod = self.model.get_submodule(module_name)
        except AttributeError:
            raise ValueError(
                f"the adapter targets module {module_name!r}, which the model does not have"
            ) from None
        if isinstance(mod, MultiLoRALinear):
            return mod
        if not hasattr(mod, "in_features") or not hasattr(mod, "out_features"):
            raise ValueError(
                f"the adapter targets {module_name!r} ({type(mod).__name__}); only linear layers are supported"
            )
        wrapper = MultiLoRALinear(mod, self.routing)
        parent_name, _, child = module_name.rpartition(".")
        setattr(self.model.get_submodule(parent_name) if parent_name else self.model, child, wrapper)
        return wrapper

    def _rows_wrapper(self, layer: str) -> MultiTokenRows:
        mod = getattr(self.model, layer, None)
        if isinstance(mod, MultiTokenRows):
            return mod
        if mod is None:
            raise ValueError(f"the adapter has token rows for {layer!r}, which the model does not have")
        wrapper = MultiTokenRows(mod, self.routing, "embed" if layer == "tok_emb" else "head")
        setattr(self.model, layer, wrapper)
        return wrapper

    def _token_rows(self, rows: dict[str, TokenRowWeights]) -> dict[str, TokenRowWeights]:
        """Where each layer's rows go: a tied head reads the embedding's rows (and may not have its own)."""
        if self._tied and "lm_head" in rows:
            raise ValueError(
                "the adapter has its own lm_head token rows, but this model ties lm_head to tok_emb"
            )
        if self._tied and "tok_emb" in rows:
            return {**rows, "lm_head": rows["tok_emb"]}
        return rows

    def add(self, name: str, path: str | Path, replace: bool = False) -> dict[str, Any]:
        """Load the PEFT adapter in ``path`` as ``name``; returns its info (AdapterInfo field names).

        Raises:
            ValueError: empty / taken name (without ``replace``) or an adapter that does not fit the model.
            FileNotFoundError: no such adapter directory or file.
        """
        if not name or not isinstance(name, str):
            raise ValueError(f"adapter name {name!r} must be a non-empty string")
        if name in self.infos and not replace:
            raise ValueError(f"adapter {name!r} is already loaded; unload it first or replace it")
        weights, token_rows, cfg = read_adapter(path)
        rows = self._token_rows(token_rows)
        targets = {m: self._wrapper(m) for m in weights}  # checks every target before attaching any
        row_targets = {layer: self._rows_wrapper(layer) for layer in rows}
        for w in weights.values():
            w.A, w.B = w.A.to(self._device), w.B.to(self._device)
        for r in rows.values():
            r.ids, r.rows = r.ids.to(self._device), r.rows.to(self._device)
        try:
            for module, w in weights.items():
                targets[module].add(name, w)
            for layer, r in rows.items():
                row_targets[layer].add(name, r)
        except ValueError:
            for wrapper in targets.values():
                wrapper.adapters.pop(name, None)
            for rw in row_targets.values():
                rw.remove(name)
            raise
        if name in self.infos:  # replaced: drop factors / rows of modules the new version does not target
            for mod in self.model.modules():
                if isinstance(mod, MultiLoRALinear) and mod not in targets.values():
                    mod.adapters.pop(name, None)
                if isinstance(mod, MultiTokenRows) and mod not in row_targets.values():
                    mod.remove(name)
        ranks = sorted({w.A.shape[0] for w in weights.values()}) or [int(cfg.get("r", 0))]
        info = {
            "name": name,
            "path": str(path),
            "rank": ranks[-1],
            "alpha": float(cfg.get("lora_alpha", ranks[-1])),
            "target_modules": sorted(weights) + sorted(f"{layer} (token rows)" for layer in token_rows),
            "num_parameters": sum(w.num_parameters for w in weights.values())
            + sum(r.num_parameters for r in token_rows.values()),
        }
        self.infos[name] = info
        self._salts[name] = f"lora:{name}:{next(self._loads)}"
        return info

    def remove(self, name: str) -> dict[str, Any]:
        """Detach adapter ``name``; returns its info. Raises KeyError naming the loaded ones."""
        if name not in self.infos:
            raise KeyError(f"unknown adapter {name!r}; loaded adapters: {', '.join(self.names()) or 'none'}")
        for mod in self.model.modules():
            if isinstance(mod, MultiLoRALinear):
                mod.adapters.pop(name, None)
            if isinstance(mod, MultiTokenRows):
                mod.remove(name)
        self._salts.pop(name, None)
        return self.infos.pop(name)

    def cache_salt(self, name: str | None) -> str:
        """Prefix-cache salt for requests on adapter ``name`` ("" for the base model)."""
        return self._salts.get(name, "") if name else ""

    def route(self, names: Sequence[str | None] | None) -> None:
        """Engine hook: before a forward, row i uses adapter ``names[i]``; ``None`` after it."""
        if not self.infos and not self.routing.groups:
            return
        self.routing.set_rows(names, self._device)


__all__ = ["AdapterSet"]
