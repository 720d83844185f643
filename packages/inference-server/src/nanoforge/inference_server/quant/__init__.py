"""Weight-only quantization for serving: int8 per-channel and 4-bit group-wise linear layers.

``quantize_model(model, "int8" | "int4" | "int4-g32" ...)`` swaps a loaded model's ``nn.Linear`` modules;
see ``linear`` for the formats and ``apply`` for what is (not) quantized.
"""

from nanoforge.inference_server.quant.apply import QUANTIZERS, model_bytes, quantize_model
from nanoforge.inference_server.quant.linear import Int4Linear, Int8Linear

__all__ = ["QUANTIZERS", "Int4Linear", "Int8Linear", "model_bytes", "quantize_model"]
