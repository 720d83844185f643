"""Multi-LoRA serving: PEFT-format adapters, per-row routing, batched ``MultiLoRALinear``.

``AdapterSet(model).add("name", "dir")`` attaches an adapter; the engine calls ``route`` before each forward
so every row of a batch uses its own adapter (or none) — its LoRA factors and its trainable token rows.
"""

from nanoforge.inference_server.lora.adapters import AdapterSet
from nanoforge.inference_server.lora.linear import LoRARouting, LoRAWeights, MultiLoRALinear
from nanoforge.inference_server.lora.peft_format import read_adapter
from nanoforge.inference_server.lora.token_rows import MultiTokenRows, TokenRowWeights

__all__ = [
    "AdapterSet",
    "LoRARouting",
    "LoRAWeights",
    "MultiLoRALinear",
    "MultiTokenRows",
    "TokenRowWeights",
    "read_adapter",
]
