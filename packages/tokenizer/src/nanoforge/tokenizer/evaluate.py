"""Tokenizer evaluation: compression, vocabulary use and what the vocabulary costs a model.

``evaluate_tokenizer(tok, paths)`` encodes held-out text files and reports:

- ``bytes_per_token`` and ``chars_per_token``: compression (higher = fewer tokens for the same text, so
  more text per context window and cheaper generation);
- ``vocab_utilisation``: the share of ids (specials excluded) that occur at least once in the text: a
  large vocabulary that the domain never uses mostly costs embedding parameters;
- ``embedding_share``: the fraction of a GPT's parameters the token embedding (plus the output head when
  untied) would take at width ``d_model`` and depth ``n_layer``, with the usual ``12 * L * d^2``
  non-embedding parameters (attention 4d^2 + MLP 8d^2 per layer);
- ``train_seconds``: from the tokenizer's metadata when it recorded its training time.

``plot_eval(rows, png)`` draws these side by side for several tokenizers (matplotlib, imported lazily).
Deliberately not here: downstream model quality (that needs a trained model: see the vocab experiment).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nanoforge.tokenizer.protocol import TokenizerLike

#: Characters of text encoded per batch while streaming a file.
CHUNK_CHARS = 1 << 20


def _read_chunks(path: Path) -> Iterator[str]:
    """Yield a UTF-8 text file in pieces of about ``CHUNK_CHARS``, cut after a newline."""
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"evaluation file {path} is empty")
    with open(path, encoding="utf-8", newline="") as fh:
        carry = ""
        while True:
            try:
                block = fh.read(CHUNK_CHARS)
            except UnicodeDecodeError as exc:
                raise ValueError(f"evaluation file {path} is not UTF-8 text ({exc.reason})") from None
            if "\x00" in block:
                raise ValueError(
                    f"evaluation file {path} looks binary (contains NUL bytes); expected UTF-8 text"
                )
            if not block:
                if carry:
                    yield carry
                return
            text = carry + block
            cut = text.rfind("\n") + 1
            if cut == 0:
                carry = text
                continue
            yield text[:cut]
            carry = text[cut:]


def train_seconds(tok: TokenizerLike) -> float | None:
    """Training time recorded in ``tok.metadata`` (``train_seconds``, or counting + merging), if any."""
    meta = getattr(tok, "metadata", None) or {}
    if "train_seconds" in meta:
        return float(meta["train_seconds"])
    parts = [meta[k] for k in ("count_seconds", "merge_seconds") if isinstance(meta.get(k), (int, float))]
    return round(float(sum(parts)), 3) if parts else None


def embedding_cost(vocab_size: int, d_model: int, n_layer: int, tied: bool) -> dict[str, float]:
    """Parameters of the embedding (and untied head) vs the rest of a GPT.

    Example: ``embedding_cost(8192, 512, 8, True)`` -> embedding 4,194,304 of 29,360,128 total (14.3%).
    """
    if d_model < 1 or n_layer < 0 or vocab_size < 1:
        raise ValueError(
            f"need vocab_size >= 1, d_model >= 1, n_layer >= 0; got {vocab_size}, {d_model}, {n_layer}"
        )
    embedding = vocab_size * d_model * (1 if tied else 2)
    body = 12 * n_layer * d_model * d_model
    return {
        "embedding_params": embedding,
        "non_embedding_params": body,
        "embedding_share": embedding / (embedding + body),
    }


def evaluate_tokenizer(
    tok: TokenizerLike,
    paths: Sequence[str | os.PathLike[str]],
    *,
    d_model: int = 512,
    n_layer: int = 8,
    tied: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Encode the files and return the statistics described in the module docstring.

    Args:
        tok: any ``TokenizerLike``.
        paths: UTF-8 text files (special-token strings in them are encoded as plain text).
        d_model, n_layer, tied: the model shape used for ``embedding_share``.
        name: label for the row (default: the tokenizer's repr class name and vocab size).

    Raises:
        FileNotFoundError / ValueError: missing, empty or binary files; no files at all.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("evaluate_tokenizer needs at least one text file")
    n_bytes = n_chars = n_tokens = 0
    seen: set[int] = set()
    for p in paths:
        for text in _read_chunks(Path(p)):
            ids = tok.encode(text, allowed_special="none")
            n_chars += len(text)
            n_bytes += len(text.encode("utf-8"))
            n_tokens += len(ids)
            seen.update(ids)
    n_regular = tok.vocab_size - len(tok.special_tokens)
    used = len(seen - set(tok.special_tokens.values()))
    row: dict[str, Any] = {
        "name": name or f"{type(tok).__name__}-{tok.vocab_size}",
        "vocab_size": tok.vocab_size,
        "n_bytes": n_bytes,
        "n_chars": n_chars,
        "n_tokens": n_tokens,
        "bytes_per_token": n_bytes / n_tokens if n_tokens else 0.0,
        "chars_per_token": n_chars / n_tokens if n_tokens else 0.0,
        "vocab_used": used,
        "vocab_utilisation": used / n_regular if n_regular else 0.0,
        "d_model": d_model,
        "n_layer": n_layer,
        "tied": tied,
        "train_seconds": train_seconds(tok),
    }
    row.update(embedding_cost(tok.vocab_size, d_model, n_layer, tied))
    return row


#: (row key, axis title) of each panel drawn by ``plot_eval``.
PLOT_PANELS: tuple[tuple[str, str], ...] = (
    ("bytes_per_token", "bytes / token (higher = better compression)"),
    ("vocab_utilisation", "share of vocabulary used"),
    ("embedding_share", "embedding share of model parameters"),
)


def plot_eval(rows: Sequence[dict[str, Any]], png_path: str | os.PathLike[str]) -> Path:
    """Bar charts of ``PLOT_PANELS`` for each evaluated tokenizer, written atomically as a PNG.

    Raises:
        ValueError: no rows, or ``png_path`` does not end in ``.png``.
        ImportError: matplotlib is not installed (``pip install 'nanoforge-tokenizer[plot]'``).
    """
    png = Path(png_path)
    if not rows:
        raise ValueError("plot_eval needs at least one evaluated tokenizer")
    if png.suffix.lower() != ".png":
        raise ValueError(f"plot file must end in .png, got {str(png)!r}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'nanoforge-tokenizer[plot]'") from exc
    names = [str(r["name"]) for r in rows]
    fig, axes = plt.subplots(1, len(PLOT_PANELS), figsize=(4.5 * len(PLOT_PANELS), 3.8))
    for ax, (key, title) in zip(axes, PLOT_PANELS):
        values = [float(r[key]) for r in rows]
        bars = ax.bar(range(len(rows)), values, color="#4c72b0")
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=8)
        ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"tokenizer evaluation (d_model={rows[0]['d_model']}, n_layer={rows[0]['n_layer']})")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{png.name}.", suffix=".png", dir=png.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, png)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return png
