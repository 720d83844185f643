"""``nanoforge serve batch``: offline batched generation from a JSONL file (see ``batch`` for the format).

What it does: parses the options, calls ``batch.run_batch`` (in-process, or on Ray actors with ``--ray``)
and prints a one-line summary on stderr. Heavy imports happen inside the command, so ``nanoforge --help``
stays fast.
What it does not do: serve requests over the network (that is ``nanoforge serve``).
"""

from __future__ import annotations

from pathlib import Path

import click

from nanoforge.cli import UserError


def _adapters(values: tuple[str, ...]) -> dict[str, str | Path] | None:
    out: dict[str, str | Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"bad --adapter {value!r}; expected NAME=DIR")
        out[name] = path
    return out or None


@click.command("batch")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False))
@click.option("--ray", "use_ray", is_flag=True, help="Run on a Ray Data actor pool (RAY_ADDRESS or local).")
@click.option("--num-actors", default=1, show_default=True, type=click.IntRange(1), help="Ray actors.")
@click.option("--max-batch-size", default=8, show_default=True, type=click.IntRange(1, 4096))
@click.option("--max-seq-len", default=None, type=click.IntRange(2), help="Context length cap.")
@click.option("--quantize", default=None, help="Weight quantization: int8, int4, int4-g32/-g64/-g128.")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR", help="LoRA adapter (repeatable).")
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda:0.")
def batch_command(
    model_dir: str,
    input_path: str,
    output_path: str,
    use_ray: bool,
    num_actors: int,
    max_batch_size: int,
    max_seq_len: int | None,
    quantize: str | None,
    adapters: tuple[str, ...],
    device: str,
) -> None:
    """Generate for every request line of --input and write one result line each to --output."""
    from nanoforge.inference_server.batch import run_batch
    from nanoforge.inference_server.errors import InferenceError

    try:
        summary = run_batch(
            model_dir,
            input_path,
            output_path,
            use_ray=use_ray,
            num_actors=num_actors,
            max_batch_size=max_batch_size,
            max_seq_len=max_seq_len,
            quantize=quantize,
            adapters=_adapters(adapters),
            device=device,
        )
    except InferenceError as e:
        raise UserError(str(e)) from None
    click.echo(
        f"{summary['requests']} requests ({summary['errors']} failed), {summary['completion_tokens']} tokens "
        f"in {summary['seconds']:.1f} s ({summary['tokens_per_s']:.1f} tokens/s) -> {output_path}",
        err=True,
    )


__all__ = ["batch_command"]
