"""``nanoforge tokenizer ...``: train, encode, decode, export and evaluate tokenizers from the shell.

Every command loads tokenizers with ``load_any_tokenizer`` (native or HF directories). Bad input (missing,
empty or binary files, a vocab size too small for its special tokens, an invalid regex, a corrupted
tokenizer file) ends with one ``error: ...`` line and exit status 1. ``train`` and ``export`` build their
output in a temporary directory beside the target and rename it into place at the end, so a failure never
leaves a half-written output directory.

Not here: any tokenizer logic; this module only parses arguments and prints.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from nanoforge.cli import UserError
from nanoforge.cli.errors import debug_enabled, one_line


def _user_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn library ``ValueError``/``OSError`` into ``UserError`` (one ``error:`` line, exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (ValueError, OSError, ImportError) as exc:  # ImportError: a missing optional extra
            if debug_enabled():
                raise
            raise UserError(one_line(exc)) from exc

    return wrapper


def _load(path: str) -> Any:
    from nanoforge.tokenizer.hf import load_any_tokenizer

    try:
        return load_any_tokenizer(path)
    except FileNotFoundError as exc:
        raise UserError(f"{exc} (expected a tokenizer directory or tokenizer.json)") from None
    except ValueError as exc:
        raise UserError(f"cannot load tokenizer {path}: {exc}") from None


def _check_inputs(paths: tuple[str, ...]) -> None:
    for p in paths:
        if not Path(p).exists() and not any(ch in p for ch in "*?["):
            raise UserError(f"input not found: {p} (expected a text file, a directory or a glob)")


def _publish_dir(build: Callable[[Path], None], out: Path, force: bool) -> None:
    """Run ``build(tmp_dir)`` then move ``tmp_dir`` to ``out``; on any failure remove ``tmp_dir``."""
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output {out} already exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        build(tmp)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@click.group(name="tokenizer")
def group() -> None:
    """Byte-level BPE tokenizers: train, encode, decode, export (HF / tiktoken), evaluate."""


@group.command()
@click.option(
    "--input", "inputs", multiple=True, required=True, help="Text file, directory or glob (repeatable)."
)
@click.option("--vocab-size", type=int, required=True, help="Total ids: 256 bytes + merges + special tokens.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output tokenizer directory.")
@click.option(
    "--pattern", default="gpt4", show_default=True, help="Split regex: gpt4, gpt2 or a custom regex."
)
@click.option("--special", "specials", multiple=True, help="Extra special token (repeatable).")
@click.option(
    "--min-frequency", type=int, default=2, show_default=True, help="Stop when the best pair is rarer."
)
@click.option("--workers", type=int, default=None, help="Processes for counting (default: all cores).")
@click.option(
    "--chat-template",
    type=click.Choice(["chatml", "llama3", "none"]),
    default="chatml",
    show_default=True,
    help="Chat template to attach; its special tokens are added to the vocabulary.",
)
@click.option("--force", is_flag=True, help="Replace --out if it already exists.")
@_user_errors
def train(
    inputs: tuple[str, ...],
    vocab_size: int,
    out: Path,
    pattern: str,
    specials: tuple[str, ...],
    min_frequency: int,
    workers: int | None,
    chat_template: str,
    force: bool,
) -> None:
    """Train a tokenizer on text files and save it to --out."""
    from nanoforge.tokenizer.chat import get_template, template_specials
    from nanoforge.tokenizer.train import train_bpe

    _check_inputs(inputs)
    all_specials = ["<|endoftext|>", *specials]
    template = None if chat_template == "none" else get_template(chat_template)
    if template is not None:
        all_specials += template_specials(template)
    all_specials = list(dict.fromkeys(all_specials))

    def build(tmp: Path) -> None:
        tok = train_bpe(
            list(inputs),
            vocab_size=vocab_size,
            pattern=pattern,
            special_tokens=all_specials,
            min_frequency=min_frequency,
            num_workers=workers,
            show_progress=True,
        )
        tok.chat_template = template
        tok.save(tmp)
        n_merges = len(tok.merges)
        click.echo(
            f"trained {out}: vocab_size={tok.vocab_size} ({n_merges} merges, {len(tok.special_tokens)} specials)",
            err=True,
        )

    _publish_dir(build, out, force)


def _read_text(text: str | None) -> str:
    if text is not None:
        return text
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("no text: pass --text or pipe text on stdin")
    return sys.stdin.read()


@group.command()
@click.option("--tokenizer", "tok_path", required=True, help="Tokenizer directory or tokenizer.json.")
@click.option("--text", default=None, help="Text to encode (default: stdin).")
@click.option("--allow-special", is_flag=True, help="Turn special-token strings in the text into their ids.")
@_user_errors
def encode(tok_path: str, text: str | None, allow_special: bool) -> None:
    """Print the ids of the text, comma-separated."""
    tok = _load(tok_path)
    ids = tok.encode(_read_text(text), allowed_special="all" if allow_special else "none")
    click.echo(",".join(map(str, ids)))


def _parse_ids(raw: str) -> list[int]:
    parts = [p for p in raw.replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("-").isdigit())
        raise UserError(f"bad token id {bad!r}; expected integers like 1,2,3") from None


@group.command()
@click.option("--tokenizer", "tok_path", required=True, help="Tokenizer directory or tokenizer.json.")
@click.option("--ids", default=None, help='Ids like "1,2,3" (default: stdin).')
@_user_errors
def decode(tok_path: str, ids: str | None) -> None:
    """Print the text of the ids."""
    tok = _load(tok_path)
    click.echo(tok.decode(_parse_ids(_read_text(ids))))


def _export_hf(tok: Any, out: Path, force: bool) -> None:
    """Write the HF files into ``out`` (new, or an existing dir such as an exported model's), each atomically."""
    from nanoforge.tokenizer.hf_export import HF_TOKENIZER_FILE, export_hf

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; hf export writes a directory")
    if (out / HF_TOKENIZER_FILE).exists() and not force:
        raise UserError(f"{out / HF_TOKENIZER_FILE} already exists; pass --force to overwrite it")
    export_hf(tok, out)


def _export_tiktoken(tok: Any, out: Path, force: bool) -> None:
    from nanoforge.tokenizer.io import export_tiktoken

    if out.exists() and not force and not out.is_dir():
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; tiktoken export writes one file (e.g. vocab.tiktoken)")
    export_tiktoken(tok, out)


#: ``--format`` value -> exporter(native tokenizer, output path).
EXPORTERS: dict[str, Callable[[Any, Path, bool], None]] = {"hf": _export_hf, "tiktoken": _export_tiktoken}


@group.command()
@click.option("--tokenizer", "tok_path", required=True, help="Native tokenizer directory.")
@click.option("--format", "fmt", type=click.Choice(sorted(EXPORTERS)), required=True, help="Target format.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory (hf) or file.")
@click.option("--force", is_flag=True, help="Overwrite an existing tokenizer file at --out.")
@_user_errors
def export(tok_path: str, fmt: str, out: Path, force: bool) -> None:
    """Export a native tokenizer to HF tokenizer.json or a tiktoken ranks file."""
    from nanoforge.tokenizer.core import Tokenizer

    tok = _load(tok_path)
    if not isinstance(tok, Tokenizer):
        raise UserError(f"{tok_path} is not a native nanoforge tokenizer; only those can be exported")
    EXPORTERS[fmt](tok, out, force)
    click.echo(f"wrote {fmt} export to {out}", err=True)


def _print_table(row: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tokenizer {row['name']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    secs = row["train_seconds"]
    shown = [
        ("vocab size", f"{row['vocab_size']:,}"),
        ("text bytes / chars", f"{row['n_bytes']:,} / {row['n_chars']:,}"),
        ("tokens", f"{row['n_tokens']:,}"),
        ("bytes per token", f"{row['bytes_per_token']:.3f}"),
        ("chars per token", f"{row['chars_per_token']:.3f}"),
        ("vocab used", f"{row['vocab_used']:,} ({row['vocab_utilisation']:.1%})"),
        (
            f"embedding share (d={row['d_model']}, L={row['n_layer']}, {'tied' if row['tied'] else 'untied'})",
            f"{row['embedding_share']:.1%} of {row['embedding_params'] + row['non_embedding_params']:,}",
        ),
        ("training time", "n/a" if secs is None else f"{secs:.2f} s"),
    ]
    for k, v in shown:
        table.add_row(k, v)
    Console().print(table)


@group.command(name="eval")
@click.option("--tokenizer", "tok_paths", multiple=True, required=True, help="Tokenizer dir (repeatable).")
@click.option("--input", "inputs", multiple=True, required=True, help="UTF-8 text file (repeatable).")
@click.option("--width", type=click.IntRange(min=1), default=512, show_default=True, help="Model d_model.")
@click.option("--layers", type=click.IntRange(min=0), default=8, show_default=True, help="Model n_layer.")
@click.option("--untied", is_flag=True, help="Count a separate output head (embedding params x2).")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG comparison plot.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of tables.")
@_user_errors
def eval_cmd(
    tok_paths: tuple[str, ...],
    inputs: tuple[str, ...],
    width: int,
    layers: int,
    untied: bool,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Compression, vocab use and embedding cost of tokenizers on text files."""
    from nanoforge.tokenizer.evaluate import evaluate_tokenizer, plot_eval

    for p in inputs:
        if not Path(p).is_file():
            raise UserError(f"input file not found: {p}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot must name a .png file, got {str(plot)!r}")
    rows = []
    for path in tok_paths:
        tok = _load(path)
        name = Path(path).name if Path(path).name != "tokenizer.json" else Path(path).parent.name
        rows.append(
            evaluate_tokenizer(tok, list(inputs), d_model=width, n_layer=layers, tied=not untied, name=name)
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            _print_table(row)
    if plot is not None:
        plot_eval(rows, plot)
        click.echo(f"wrote plot {plot}", err=True)
