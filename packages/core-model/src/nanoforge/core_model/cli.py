"""The ``nanoforge model`` command group: generate text, convert to/from HF, print a model's size and cost.

    nanoforge model generate --model DIR --prompt "Hello" --max-new-tokens 32 --temperature 0.8 --seed 1
    nanoforge model generate --model DIR --prompt-ids 1,2,3 --json     # one JSON object {"ids", "text"}
    nanoforge model convert --from-hf HF_DIR --out OUR_DIR
    nanoforge model convert --to-hf OUR_DIR --out HF_DIR [--arch llama|gpt2]
    nanoforge model info DIR [--seq-len N] [--batch B] [--json]

DIR is one of our checkpoints or a HF Llama / Mistral / Qwen2 / GPT-2 directory. ``convert`` carries the
tokenizer along (HF files are copied; our ``tokenizer/`` is exported to HF format). Text in and out needs a
tokenizer next to the weights (``DIR/tokenizer/`` or ``DIR/tokenizer.json``) and the optional
``nanoforge-tokenizer`` package, imported lazily; ``--prompt-ids`` needs neither.
What it does not do: chat templates, batching many prompts, or serving (see the inference server).
Every expected failure is one ``error: ...`` line and exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from nanoforge.cli import UserError

#: HF tokenizer files copied along by ``convert`` so the converted directory still does text in/out.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DTYPES = ("float32", "bfloat16", "float16")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's bad-input exceptions into ``UserError`` (one line, exit 1)."""
    try:
        yield
    except (ValueError, OSError, KeyError) as exc:
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise UserError(" ".join(msg.split()) or type(exc).__name__) from None


def load_text_tokenizer(model_dir: Path, required: bool = True) -> Any | None:
    """The tokenizer stored with a model (``DIR/tokenizer/`` or ``DIR/tokenizer.json``), or None if none.

    Imports ``nanoforge.tokenizer`` lazily; native and HF ``tokenizer.json`` files are both understood when
    the tokenizer package provides ``load_any_tokenizer`` (else native files only, HF ones via ``tokenizers``).

    Raises:
        UserError: a tokenizer file exists but the tokenizer package is not installed (only when
            ``required``; otherwise None is returned and the caller works on ids).
    """
    path = next((p for p in (model_dir / "tokenizer", model_dir / "tokenizer.json") if p.exists()), None)
    if path is None:
        return None
    try:
        from nanoforge.tokenizer.hf import load_any_tokenizer  # native + HF formats
    except ImportError:
        try:
            from nanoforge.tokenizer import load_tokenizer as load_any_tokenizer
        except ImportError:
            if not required:
                return None
            raise UserError(
                "text in/out needs the tokenizer package: pip install 'nanoforge-core-model[text]' "
                "(or pass --prompt-ids and read the ids)"
            ) from None
    return load_any_tokenizer(path)


def parse_ids(text: str, vocab_size: int) -> list[int]:
    """``"1, 2,3"`` -> ``[1, 2, 3]``; every id must be in ``[0, vocab_size)``.

    Raises:
        UserError: not a comma-separated list of integers, or an id out of range.
    """
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--prompt-ids={text!r} must be comma-separated integers like 1,2,3") from None
    if not ids:
        raise UserError("--prompt-ids is empty; give at least one token id")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise UserError(f"--prompt-ids contains {bad[:5]}; accepted: ids in [0, {vocab_size - 1}]")
    return ids


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject sampling values that make no sense, naming the option and what is accepted."""
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens={max_new_tokens}; accepted: an integer >= 1")
    if not temperature >= 0.0:
        raise UserError(f"--temperature={temperature}; accepted: a number >= 0 (0 = greedy)")
    if top_k is not None and top_k < 0:
        raise UserError(f"--top-k={top_k}; accepted: an integer >= 0 (0 = off)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"--top-p={top_p}; accepted: a number in (0, 1]")


def token_ids_config(model_dir: Path) -> dict[str, Any]:
    """The bos/eos/pad ids of ``generation_config.json`` (ours and HF use the same keys); {} if absent."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return {}
    from nanoforge.core_model.hf.io import read_json

    data = read_json(path)
    return {k: data[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if data.get(k) is not None}


def stop_ids(model_dir: Path) -> list[int]:
    """End-of-sequence ids from ``generation_config.json`` (int or list), if any."""
    eos = token_ids_config(model_dir).get("eos_token_id")
    eos_list = eos if isinstance(eos, list) else [eos]
    return [int(i) for i in eos_list if isinstance(i, int)]


@click.group(name="model")
def group() -> None:
    """Generate with, convert and inspect models (ours or HF Llama/Mistral/Qwen2/GPT-2 directories)."""


@group.command("generate")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--prompt", default=None, help="Prompt text (needs a tokenizer in the model directory).")
@click.option("--prompt-ids", default=None, help="Prompt as comma-separated token ids, e.g. 1,2,3.")
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@click.option("--temperature", default=1.0, show_default=True, type=float, help="0 = greedy.")
@click.option("--top-k", default=None, type=int, help="Keep the k most likely tokens (0 = off).")
@click.option("--top-p", default=None, type=float, help="Nucleus sampling mass in (0, 1].")
@click.option("--seed", default=None, type=int, help="Random seed for reproducible sampling.")
@click.option("--json", "as_json", is_flag=True, help='Print one JSON object {"ids": [...], "text": ...}.')
def generate_cmd(
    model_dir: Path,
    prompt: str | None,
    prompt_ids: str | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    as_json: bool,
) -> None:
    """Continue a prompt; streams text (or ids) to stdout as tokens are sampled."""
    if (prompt is None) == (prompt_ids is None):
        raise UserError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    with user_errors():
        from nanoforge.core_model.generate import stream_generate
        from nanoforge.core_model.hf import load_any_model

        model = load_any_model(model_dir)
        tokenizer = load_text_tokenizer(model_dir, required=prompt is not None)
        if prompt is not None:
            if tokenizer is None:
                raise UserError(
                    f"{model_dir} has no tokenizer (looked for tokenizer/ and tokenizer.json); use --prompt-ids"
                )
            ids = tokenizer.encode(prompt)
            if not ids:
                raise UserError("--prompt encodes to zero tokens; give some text")
        else:
            ids = parse_ids(str(prompt_ids), model.config.vocab_size)
        decoder = tokenizer.stream_decoder() if tokenizer is not None else None
        out_ids: list[int] = []
        stops = stop_ids(model_dir)
        steps = stream_generate(
            model,
            [ids],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k or 0,
            top_p=1.0 if top_p is None else top_p,
            seed=seed,
            stop_token_ids=stops,
        )
        for step in steps:  # one token per prompt per step; None once a row has stopped
            token = step[0]
            if token is None:
                break
            out_ids.append(int(token))
            if int(token) in stops:  # the stop token ends the text; it is kept in `ids`, never printed
                break
            if not as_json:
                click.echo(decoder.push(token) if decoder is not None else f"{token} ", nl=False)
                sys.stdout.flush()
    if as_json:
        text_ids = out_ids[:-1] if out_ids and out_ids[-1] in stops else out_ids
        text = tokenizer.decode(text_ids) if tokenizer is not None else None
        click.echo(json.dumps({"ids": out_ids, "text": text}, ensure_ascii=False))
    else:
        click.echo(decoder.flush() if decoder is not None else "")


@group.command("convert")
@click.option(
    "--from-hf", "from_hf", type=click.Path(path_type=Path), help="HF checkpoint directory to import."
)
@click.option("--to-hf", "to_hf", type=click.Path(path_type=Path), help="Our checkpoint directory to export.")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Destination directory."
)
@click.option(
    "--arch",
    type=click.Choice(["llama", "gpt2"]),
    default=None,
    help="HF layout for --to-hf (default: gpt2 for GPT-2-shaped models, else llama).",
)
def convert_cmd(from_hf: Path | None, to_hf: Path | None, out_dir: Path, arch: str | None) -> None:
    """Import a HF Llama/Mistral/Qwen2/GPT-2 checkpoint, or export ours to HF Llama/GPT-2."""
    if (from_hf is None) == (to_hf is None):
        raise UserError("give exactly one of --from-hf DIR or --to-hf DIR")
    with user_errors():
        from nanoforge.core_model.hf import export_hf, is_native_dir, load_hf_dir

        if from_hf is not None:
            from nanoforge.core_model.checkpoint import save_model

            if arch is not None:
                raise UserError("--arch only applies to --to-hf")
            if not from_hf.is_dir():
                raise UserError(f"--from-hf {str(from_hf)!r} is not a directory")
            model = load_hf_dir(from_hf)
            save_model(model, out_dir, generation_config=token_ids_config(from_hf) or None)
            copied = _copy_tokenizer_files(from_hf, out_dir)
            src = from_hf
        else:
            assert to_hf is not None
            if not is_native_dir(to_hf):
                raise UserError(
                    f"--to-hf {str(to_hf)!r} is not a nanoforge model directory (config.json format)"
                )
            from nanoforge.core_model.checkpoint import load_model

            model = load_model(to_hf)
            export_hf(model, out_dir, arch=arch, generation=token_ids_config(to_hf))
            copied = _copy_tokenizer_files(to_hf, out_dir) or _export_native_tokenizer(
                to_hf, out_dir, model.config.max_seq_len
            )
            src = to_hf
    note = f" (+ {', '.join(copied)})" if copied else ""
    click.echo(f"converted {src} -> {out_dir}{note}")


def _export_native_tokenizer(src: Path, dst: Path, max_len: int) -> list[str]:
    """Write our ``src/tokenizer/`` as HF ``tokenizer.json`` into ``dst`` (needs nanoforge-tokenizer)."""
    if not (src / "tokenizer" / "tokenizer.json").is_file():
        return []
    try:
        from nanoforge.tokenizer import load_tokenizer
        from nanoforge.tokenizer.hf_export import export_hf as export_tokenizer
    except ImportError:
        click.echo("note: tokenizer not exported (install nanoforge-tokenizer to export it)", err=True)
        return []
    export_tokenizer(load_tokenizer(src / "tokenizer"), dst, model_max_length=max_len)
    return ["tokenizer.json (exported from tokenizer/)"]


def _copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy HF-format tokenizer files next to the converted weights; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


@group.command("info")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option(
    "--seq-len", default=None, type=int, help="Sequence length for FLOPs/memory (default: max_seq_len)."
)
@click.option("--batch", default=1, show_default=True, type=int, help="Batch size for the memory estimate.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info_cmd(model_dir: Path, seq_len: int | None, batch: int, dtype: str, as_json: bool) -> None:
    """Parameter breakdown, FLOPs per token and memory estimate (reads config.json only, not weights)."""
    with user_errors():
        from nanoforge.core_model import info

        config = read_any_config(model_dir)
        seq = seq_len if seq_len is not None else config.max_seq_len
        if seq < 1 or batch < 1:
            raise UserError(f"--seq-len={seq} and --batch={batch} must be >= 1")
        report = {
            "model_dir": str(model_dir),
            "config": config.to_dict(),
            "parameters": info.count_parameters(config),
            "flops_per_token": info.flops_per_token(config, seq),
            "memory": info.memory_estimate(config, batch, seq, dtype),
            "seq_len": seq,
            "batch": batch,
            "dtype": dtype,
        }
    if as_json:
        click.echo(json.dumps(report, default=str))
        return
    c = config
    click.echo(
        f"{model_dir}: {c.n_layer} layers, d_model {c.d_model}, {c.n_head} heads "
        f"({c.kv_heads} kv), vocab {c.vocab_size}, max_seq_len {c.max_seq_len}"
    )
    for section in ("parameters", "flops_per_token", "memory"):
        click.echo(f"{section}:")
        value = report[section]
        items = list(value.items()) if isinstance(value, dict) else [("total", value)]
        width = max(len(str(key)) for key, _ in items)
        for key, item in items:
            click.echo(f"  {key:<{width}}  {_human(item)}")


def _human(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value:,.0f} ({value / size:.2f}{unit})"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def read_any_config(model_dir: Path) -> Any:
    """Our ``ModelConfig`` from a model directory's config.json, ours or HF, without reading weights."""
    from nanoforge.core_model.config import ModelConfig
    from nanoforge.core_model.hf import FAMILIES, hf_model_type
    from nanoforge.core_model.hf.io import read_json
    from nanoforge.core_model.hf.registry import NATIVE_FORMAT

    if not model_dir.is_dir():
        raise UserError(f"model directory {str(model_dir)!r} does not exist")
    raw = read_json(model_dir / "config.json")
    if raw.get("format") == NATIVE_FORMAT:
        return ModelConfig.from_dict(raw["config"])
    return FAMILIES[hf_model_type(raw)].config_from_hf(raw)
