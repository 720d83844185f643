"""Shared plumbing of the trainer experiments: results JSON with run metadata, header line, atomic writes.

Used by training_tricks.py, attention_variants.py and vocab_size.py (imported as a sibling module: the
scripts run as ``python tools/experiments/<name>.py``, so this folder is on ``sys.path``).

What it does: saves ``{"meta": ..., "rows": [...]}`` results files and reads them back (also the older
bare-list files, which carry no metadata), records the facts a write-up must state about its run (exact
command, date, torch version, threads, CPUs, load average at the start and end), renders them as one
"Command: ..." paragraph, writes text and figures atomically, and prepares tinyshakespeare as byte ids.
What it does not do: train or interpret anything; each experiment's ``interpret`` turns its own numbers
into sentences.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def prepare_shakespeare(out: Path) -> Path:
    """Byte ids of tinyshakespeare with nanoGPT's split (first 90% train, last 10% val) in ``out``."""
    import numpy as np

    from nanoforge.trainer.prepare import byte_tokenizer, write_arrays

    ids = np.frombuffer(SHAKESPEARE.read_bytes(), dtype=np.uint8).astype(np.uint16)
    n = int(len(ids) * 0.9)
    write_arrays(
        out,
        {"train": ids[:n], "val": ids[n:]},
        byte_tokenizer(),
        {"train": n, "val": len(ids) - n},
        [str(SHAKESPEARE)],
    )
    return out


def run_meta(cmd: str, args: dict[str, Any], load_start: float) -> dict[str, Any]:
    """What the write-up states about a run; call once training is over (the end load is read now).

    Args:
        cmd: the exact command line that reproduces the run.
        args: the parsed options that shape the results (steps, threads, seeds ...), JSON-serialisable.
        load_start: ``os.getloadavg()[0]`` taken before training started.
    """
    import torch

    return {
        "command": cmd,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_start": round(load_start, 2),
        "load_end": round(os.getloadavg()[0], 2),
        "args": args,
    }


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure to ``path`` (PNG) atomically."""
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def save_results(path: Path, meta: dict[str, Any], rows: list[dict]) -> None:
    """Write ``{"meta": meta, "rows": rows}`` to ``path`` as indented JSON, atomically."""
    write_text(path, json.dumps({"meta": meta, "rows": rows}, indent=1))


def load_results(path: Path) -> tuple[dict[str, Any], list[dict]]:
    """``(meta, rows)`` from a results file; a bare list (older files) gives ``meta = {}``.

    Raises:
        SystemExit: with a one-line message when the file is missing or is not a results file.
    """
    if not path.is_file():
        raise SystemExit(
            f"error: results file {path} not found; run the experiment once without --render-only"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path} is not valid JSON ({e}); expected a results file") from None
    if isinstance(data, list):
        return {}, data
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        return dict(data.get("meta") or {}), data["rows"]
    raise SystemExit(f"error: {path} holds {type(data).__name__}; expected a list or {{'meta', 'rows'}}")


def load_level(meta: dict[str, Any]) -> str:
    """How busy the machine was during the run: unknown, busy (> 2x cores), shared (> cores) or idle.

    Example: ``{"cpus": 2, "load_start": 2.5, "load_end": 1.0}`` -> ``"shared"``.
    """
    loads = [x for x in (meta.get("load_start"), meta.get("load_end")) if x is not None]
    cpus = meta.get("cpus") or 1
    if not loads:
        return "unknown"
    return "busy" if max(loads) > 2 * cpus else "shared" if max(loads) > cpus else "idle"


def header(meta: dict[str, Any]) -> str:
    """The "Command: ..." paragraph: exact command, date, torch, threads, CPUs and what the load means."""
    if not meta:
        return "Command, date and machine load: not recorded in the results file of this run."
    args = meta.get("args", {})
    start, end, cpus = meta.get("load_start"), meta.get("load_end"), meta.get("cpus") or 1
    load = (
        ", ".join(f"{x:.1f} at the {w}" for x, w in ((start, "start"), (end, "end")) if x is not None)
        or "not recorded"
    )
    busy = {
        "unknown": "load not recorded",
        "busy": "the machine was busy (load over twice the core count), so wall-clock speeds mostly measure "
        "other jobs",
        "shared": "the machine was oversubscribed (load above the core count), so wall-clock speeds are "
        "indicative",
        "idle": "the machine was not overloaded (load at or below the core count)",
    }[load_level(meta)]
    threads = f", {args['threads']} torch thread(s)" if "threads" in args else ""
    torch = f", torch {meta['torch']}" if meta.get("torch") else ""
    note = f" {meta['note']}" if meta.get("note") else ""
    return f"Command: `{meta['command']}` (run {meta.get('date', 'date not recorded')}{torch}{threads}, {cpus} CPUs; 1-minute load average {load}: {busy}).{note}"


def seed_note(values: dict[int, float], arm: str, unit: str = "nats") -> tuple[float | None, str]:
    """The seed spread of a reference arm and a sentence about what it lets the run resolve.

    Args:
        values: seed -> final val loss of the reference arm (one entry when it was not repeated).
        arm: the reference arm's name, for the sentence.
        unit: unit of the values, for the sentence.

    Returns:
        ``(spread, sentence)``: spread = max - min over the seeds, or None with one seed.

    Example: ``{1337: 2.326, 1338: 2.331, 1339: 2.322}, "baseline"`` -> ``(0.009, "...")``.
    """
    if len(values) < 2:
        return None, (
            "Every arm ran with one seed and the run has no seed repeats, so it cannot say which differences "
            "exceed seed-to-seed noise; read small differences as unresolved (rerun with `--seeds 3`)."
        )
    spread = max(values.values()) - min(values.values())
    listed = ", ".join(f"{v:.4f} (seed {s})" for s, v in sorted(values.items()))
    return spread, (
        f"Noise: {arm}, repeated over {len(values)} seeds, ends at {listed}: a range of {spread:.4f} {unit}. "
        f"The other arms ran with seed {min(values)} and are compared with {arm} at that seed (same batches). "
        f"Differences smaller than the range are not resolved by this run, and with {len(values)} seeds the "
        "range itself is a rough estimate of the noise, so differences under about twice the range are marginal."
    )


def versus(diff: float, spread: float | None) -> str:
    """How a difference compares with the seed spread, as a parenthesis-ready phrase.

    Example: ``versus(0.004, 0.009)`` -> ``"within the seed range 0.009"``.
    """
    if spread is None:
        return "one seed: not known to exceed seed noise"
    if abs(diff) <= spread:
        return f"within the seed range {spread:.3f}"
    if spread == 0:
        return "seed range 0"
    ratio = abs(diff) / spread
    return f"{ratio:.1f}x the seed range {spread:.3f}" + (": marginal" if ratio < 2 else "")


def render_saved(
    out: Path,
    name: str,
    first: tuple[str, str],
    plot: Callable[[list[dict], Path], None],
    markdown: Callable[[dict[str, Any], list[dict]], str],
) -> str:
    """Rewrite ``out/<name>.md`` and ``.png`` from ``out/<name>.json`` (no training); returns the markdown.

    ``first`` = (key, value) the first row must have: the reference arm the others are compared with.
    """
    meta, rows = load_results(out / f"{name}.json")
    key, value = first
    if not rows or rows[0][key] != value:
        raise SystemExit(f"error: {out / name}.json must start with the {value} {key}")
    plot(rows, out / f"{name}.png")
    md = markdown(meta, rows)
    write_text(out / f"{name}.md", md)
    return md
