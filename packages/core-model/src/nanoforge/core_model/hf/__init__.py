"""Hugging Face interop: import Llama / Mistral / Qwen2 / GPT-2 checkpoints, export to Llama or GPT-2.

    from nanoforge.core_model.hf import load_hf_dir, from_hf_model, export_hf
    model = load_hf_dir("path/to/hf-dir")           # config.json + (sharded) safetensors -> our GPT
    export_hf(model, "out-dir", arch="llama")       # -> a dir AutoModelForCausalLM.from_pretrained loads

What it does not do: download anything, import ``transformers`` (only tests and benches do), or unpickle
files (safetensors only; ``.bin`` via ``torch.load(weights_only=True)``).
"""

from nanoforge.core_model.hf.export import default_arch, export_hf
from nanoforge.core_model.hf.registry import (
    ARCHITECTURES,
    EXPORT_ARCHS,
    FAMILIES,
    build_from_state,
    from_hf_model,
    hf_model_type,
    import_hf_state,
    is_native_dir,
    load_any_model,
    load_hf_dir,
)

__all__ = [
    "ARCHITECTURES",
    "EXPORT_ARCHS",
    "FAMILIES",
    "build_from_state",
    "default_arch",
    "export_hf",
    "from_hf_model",
    "hf_model_type",
    "import_hf_state",
    "is_native_dir",
    "load_any_model",
    "load_hf_dir",
]
