"""``nanoforge train``: prepare token data, pretrain, list checkpoints.

    nanoforge train prepare --input corpus/ --tokenizer tok/ --out data/demo [--val-fraction 0.1]
    nanoforge train prepare ... --ray --workers 4 [--ray-address ADDR]     (Ray Data, same output bytes)
    nanoforge train pretrain --config shakespeare-char data.dir=data/shak --out runs/shak [--resume]
    nanoforge train checkpoints runs/shak
    nanoforge train sft --config sft-demo base.model=runs/shak/final data.train=chats.jsonl --out runs/sft
    nanoforge train lora --config sft-demo base.model=runs/shak/final data.train=chats.jsonl --out runs/lora
    nanoforge train merge --base runs/shak/final --adapter runs/lora/adapter --out runs/merged
    (add --ray --num-workers 2 [--ray-address ADDR] to pretrain / sft / lora for Ray Train DDP)

What it does: parses options, shows progress, prints one-line results; every bad input becomes
``error: ...`` (exit 1) through the umbrella command. What it does not do: any training logic itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from nanoforge.cli import UserError, progress


def ray_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--ray --num-workers N --ray-address ADDR --max-failures K`` (Ray Train DDP)."""
    fn = click.option("--max-failures", default=2, show_default=True, type=int, help="Ray: worker restarts.")(
        fn
    )
    fn = click.option("--ray-address", default=None, help="Ray: join this cluster (default: a local Ray).")(
        fn
    )
    fn = click.option("--num-workers", default=2, show_default=True, type=int, help="Ray: DDP workers.")(fn)
    return click.option("--ray", "use_ray", is_flag=True, help="Run under Ray Train's TorchTrainer (DDP).")(
        fn
    )


def _launch(recipe: str, cfg: Any, out_dir: Path, resume: bool, ray: dict[str, Any]) -> dict[str, Any]:
    """Run a recipe in this process or, with ``--ray``, on Ray Train workers."""
    from nanoforge.trainer.pretrain import NonFiniteLoss

    try:
        if ray["use_ray"]:
            from nanoforge.trainer.ray_launcher import run_ray

            return run_ray(
                recipe,
                cfg,
                out_dir,
                resume=resume,
                num_workers=ray["num_workers"],
                address=ray["ray_address"],
                max_failures=ray["max_failures"],
            )
        if recipe == "pretrain":
            from nanoforge.trainer.pretrain import run as run_pretrain

            return run_pretrain(cfg, out_dir, resume=resume)
        from nanoforge.trainer.finetune import run as run_finetune

        return run_finetune(cfg, out_dir, resume=resume)
    except NonFiniteLoss as e:
        raise UserError(str(e)) from e


@click.group(name="train")
def group() -> None:
    """Prepare token data, pretrain, fine-tune (SFT / LoRA), merge adapters; optionally on Ray."""


@group.command("prepare")
@click.option("--input", "inputs", multiple=True, required=True, help="File, directory or glob (repeatable).")
@click.option("--tokenizer", required=True, help="Tokenizer directory, or 'byte' for raw byte ids 0..255.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--val-fraction", default=0.1, show_default=True, type=float, help="Share of documents in val.")
@click.option(
    "--doc-split",
    default="file",
    show_default=True,
    type=click.Choice(["file", "paragraph", "line", "jsonl"]),
    help="What one document is (the unit of the train/val split).",
)
@click.option("--workers", default=1, show_default=True, type=int, help="Encoding processes (Ray: actors).")
@click.option("--ray", "use_ray", is_flag=True, help="Encode as Ray Data tasks (same output bytes).")
@click.option("--ray-address", default=None, help="Ray: join this cluster (default: a local Ray).")
def prepare_cmd(
    inputs: tuple[str, ...],
    tokenizer: str,
    out_dir: Path,
    val_fraction: float,
    doc_split: str,
    workers: int,
    use_ray: bool,
    ray_address: str | None,
) -> None:
    """Tokenize a corpus into train/val token memmaps with a manifest (resumable)."""
    from nanoforge.trainer.prepare import prepare

    if ray_address is not None and not use_ray:
        raise UserError(f"--ray-address={ray_address} needs --ray")
    with progress() as bar:
        task = bar.add_task("prepare", total=None, info="")
        kwargs: dict[str, Any] = {
            "val_fraction": val_fraction,
            "doc_split": doc_split,
            "on_part": lambda done, total: bar.update(task, completed=done, total=total, info="blocks"),
        }
        if use_ray:
            from nanoforge.trainer.ray_launcher import prepare_ray

            manifest = prepare_ray(
                list(inputs), tokenizer, out_dir, num_workers=workers, address=ray_address, **kwargs
            )
        else:
            manifest = prepare(list(inputs), tokenizer, out_dir, workers=workers, **kwargs)
    s = manifest["splits"]
    click.echo(
        f"{out_dir}: train {s['train']['tokens']:,} tokens ({s['train']['documents']} docs), "
        f"val {s['val']['tokens']:,} tokens ({s['val']['documents']} docs), dtype {manifest['dtype']}, "
        f"{s['train']['bytes_per_token']:.2f} bytes/token"
    )


@group.command("pretrain")
@click.option(
    "--config", "config", default=None, help="YAML file or shipped config name (e.g. shakespeare-char)."
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@ray_options
@click.argument("overrides", nargs=-1)
def pretrain_cmd(
    config: str | None, out_dir: Path, resume: bool, overrides: tuple[str, ...], **ray: Any
) -> None:
    """Pretrain a model. OVERRIDES are dotted key=value pairs, e.g. model.n_layer=2 train.max_iters=100."""
    from nanoforge.trainer.config import apply_overrides, config_from_dict, load_config
    from nanoforge.trainer.pretrain import load_run_config

    if config is None and not resume:
        raise UserError("--config is required (a YAML file or a shipped name) unless --resume is given")
    if config is None:
        cfg = config_from_dict(apply_overrides(load_run_config(out_dir).to_dict(), list(overrides)))
    else:
        cfg = load_config(config, list(overrides))
    summary = _launch("pretrain", cfg, out_dir, resume, ray)
    ev = summary["eval"]
    click.echo(
        f"step {summary['step']}: val loss {ev.get('val_loss', float('nan')):.4f}, "
        f"val bpb {ev.get('val_bpb', float('nan')):.4f}, {summary['tokens_per_s']:,.0f} tok/s, "
        f"{summary['wall_s']:.1f} s; model in {summary['final']}"
    )
    if summary["tensorboard"] != "written":
        click.echo(summary["tensorboard"], err=True)


@group.command("checkpoints")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per checkpoint.")
def checkpoints_cmd(run_dir: Path, as_json: bool) -> None:
    """List the checkpoints of a run, oldest first."""
    from nanoforge.trainer.checkpoint import list_checkpoints

    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"{run_dir} has no checkpoints (looked in {run_dir / 'checkpoints'})")
    for c in ckpts:
        ev = c.meta.get("eval", {})
        if as_json:
            click.echo(
                json.dumps(
                    {"step": c.step, "path": str(c.path), "tokens_seen": c.meta.get("tokens_seen"), **ev}
                )
            )
        else:
            val = f"val loss {ev['val_loss']:.4f}" if "val_loss" in ev else "no eval"
            click.echo(f"step {c.step:>8}  tokens {c.meta.get('tokens_seen', 0):>12,}  {val}  {c.path}")


def _finetune(
    method: str, config: str | None, out_dir: Path, resume: bool, overrides: tuple[str, ...], ray: dict
) -> None:
    from nanoforge.trainer.config import apply_overrides
    from nanoforge.trainer.finetune import load_run_config
    from nanoforge.trainer.finetune_config import finetune_config_from_dict, load_finetune_config

    if config is None and resume:
        raw = apply_overrides(load_run_config(out_dir).to_dict(), list(overrides))
        cfg = finetune_config_from_dict(raw)
    else:
        cfg = load_finetune_config(config, list(overrides), method=method)
    s = _launch("finetune", cfg, out_dir, resume, ray)
    ev = s["eval"]
    where = ", ".join(f"{k} in {s[k]}" for k in ("adapter", "final") if k in s)
    click.echo(
        f"step {s['step']}: val loss {ev.get('val_loss', float('nan')):.4f}, train loss "
        f"{ev.get('train_loss', float('nan')):.4f}, {s['trainable_params']:,}/{s['total_params']:,} params "
        f"trained, {s['tokens_per_s']:,.0f} tok/s, {s['wall_s']:.1f} s; {where}"
    )


@group.command("sft")
@click.option("--config", "config", default=None, help="YAML file or shipped config name (e.g. sft-demo).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@ray_options
@click.argument("overrides", nargs=-1)
def sft_cmd(config: str | None, out_dir: Path, resume: bool, overrides: tuple[str, ...], **ray: Any) -> None:
    """Full supervised fine-tuning on chat JSONL (loss on assistant tokens only). OVERRIDES: key=value."""
    _finetune("full", config, out_dir, resume, overrides, ray)


@group.command("lora")
@click.option("--config", "config", default=None, help="YAML file or shipped config name (e.g. sft-demo).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@ray_options
@click.argument("overrides", nargs=-1)
def lora_cmd(config: str | None, out_dir: Path, resume: bool, overrides: tuple[str, ...], **ray: Any) -> None:
    """LoRA fine-tuning on chat JSONL; adapters in PEFT format (lora.impl=peft|nanoforge, lora.r, ...)."""
    _finetune("lora", config, out_dir, resume, overrides, ray)


@group.command("merge")
@click.option("--base", "base", required=True, type=click.Path(path_type=Path), help="Base model directory.")
@click.option(
    "--adapter", required=True, type=click.Path(path_type=Path), help="PEFT-format LoRA adapter dir."
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Merged model directory."
)
@click.option("--impl", default="nanoforge", show_default=True, type=click.Choice(["nanoforge", "peft"]))
def merge_cmd(base: Path, adapter: Path, out_dir: Path, impl: str) -> None:
    """Fold a LoRA adapter into its base model and save a plain model directory."""
    from nanoforge.core_model.checkpoint import save_model
    from nanoforge.core_model.hf.registry import load_any_model
    from nanoforge.trainer.adapters import LORA_IMPLS

    model = load_any_model(base)
    lora_impl = LORA_IMPLS[impl]
    merged = lora_impl.merged(lora_impl.load(model, adapter))
    save_model(merged, out_dir)
    tok_dir = base / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        from nanoforge.tokenizer.hf import load_any_tokenizer
        from nanoforge.trainer.finetune import save_tokenizer

        save_tokenizer(load_any_tokenizer(tok_dir), out_dir / "tokenizer")
    click.echo(f"{out_dir}: {base} + {adapter} merged ({merged.num_parameters():,} parameters)")
