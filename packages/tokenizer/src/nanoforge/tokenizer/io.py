"""Tokenizer files: the native ``tokenizer.json`` (+ a human-readable ``vocab.txt``) and tiktoken ranks.

Native format, version 1 (one JSON object)::

    {"format": "nanoforge-tokenizer", "version": 1, "pattern": "<split regex>",
     "merges": [[a, b], ...],                  # merge i creates id 256 + i
     "special_tokens": {"<|endoftext|>": 8191}, # ids right after the merges, in order
     "chat_template": {...} | null, "metadata": {...}}

``vocab.txt`` beside it lists ``id <TAB> rendered bytes <TAB> parents`` per token; it is for people and is
never read back. ``load`` checks the format name and version and that every merge and special id is
consistent, raising ``ValueError`` naming the file and the problem. Every write is atomic (temp file in the
same directory, fsync, ``os.replace``), so a crash never leaves a half-written file.

``export_tiktoken`` writes the standard ``.tiktoken`` ranks file (``base64(token) rank`` per line) that
``tiktoken.load.load_tiktoken_bpe`` reads. HF ``tokenizer.json`` export/import lives in ``hf.py``.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nanoforge.tokenizer.core import Tokenizer

FORMAT_NAME = "nanoforge-tokenizer"
FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"

#: Loaders by detected file format; ``load_tokenizer`` dispatches on this (``hf.py`` adds ``"hf"``).
LOADERS: dict[str, Callable[[Path, dict[str, Any]], Any]] = {}
#: Formats whose loader module registers itself in ``LOADERS`` when imported (imported on first need).
LAZY_LOADERS: dict[str, str] = {"hf": "nanoforge.tokenizer.hf"}


# ------------------------------------------------------------------------------------------ writing
def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_native_dict(tok: Tokenizer) -> dict[str, Any]:
    """The JSON-able native representation of ``tok``."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "pattern": tok.pattern,
        "merges": [[a, b] for a, b in tok.merges],
        "special_tokens": dict(tok.special_tokens),
        "chat_template": tok.chat_template,
        "metadata": tok.metadata,
    }


def render_bytes(data: bytes) -> str:
    """Readable one-line form of a token: UTF-8 where valid, ``\\xNN`` for other bytes, escaped controls.

    Example: ``b" hi\\n\\xe2" -> ' hi\\\\n\\\\xe2'`` (a leading space stays a space; a literal
    backslash is doubled so the form is unambiguous).
    """
    out = []
    for ch in data.decode("utf-8", errors="surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, smuggled through by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def vocab_text(tok: Tokenizer) -> str:
    """The ``vocab.txt`` contents: one ``id<TAB>[token]<TAB>parents`` line per id."""
    lines = ["# id\t[token bytes]\tparents (merge a + b); specials marked 'special'"]
    for i in range(256):
        lines.append(f"{i}\t[{render_bytes(tok.token_bytes(i))}]\tbyte")
    for i, (a, b) in enumerate(tok.merges):
        lines.append(f"{256 + i}\t[{render_bytes(tok.token_bytes(256 + i))}]\t{a} + {b}")
    for s, i in tok.special_tokens.items():
        lines.append(f"{i}\t[{render_bytes(s.encode())}]\tspecial")
    return "\n".join(lines) + "\n"


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer.json`` and ``vocab.txt`` into ``directory`` (created if needed).

    Both files are fully written to temp files before either replaces its target.

    Returns:
        The path of ``tokenizer.json``.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"cannot save tokenizer into {directory}: it exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(to_native_dict(tok), ensure_ascii=False, indent=None).encode("utf-8")
    vocab = vocab_text(tok).encode("utf-8")
    staged = []
    try:
        # tokenizer.json (the file that is read back) is replaced last.
        for name, data in ((VOCAB_FILE, vocab), (TOKENIZER_FILE, payload)):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            staged.append((tmp, directory / name))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
    return directory / TOKENIZER_FILE


def export_tiktoken(tok: Tokenizer, path: str | Path) -> Path:
    """Write the ``.tiktoken`` ranks file (``base64(bytes) rank`` per non-special token, rank = id).

    Special tokens are not part of that format; pass ``tok.special_tokens`` to ``tiktoken.Encoding``.
    """
    lines = [
        f"{base64.b64encode(tok.token_bytes(i)).decode('ascii')} {i}\n"
        for i in range(tok.vocab_size - len(tok.special_tokens))
    ]
    return write_atomic(path, "".join(lines).encode("ascii"))


# ------------------------------------------------------------------------------------------ reading
def _tokenizer_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    return path


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dups = sorted({k for k in keys if keys.count(k) > 1})
    if dups:
        raise ValueError(f"duplicate keys {dups}")
    return dict(pairs)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, rejecting duplicate keys; errors name the file."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupted JSON: {exc}") from None
    except ValueError as exc:  # from _no_duplicate_keys
        raise ValueError(f"{path}: {exc} (e.g. a special token listed twice)") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object at top level, got {type(obj).__name__}")
    return obj


def detect_format(obj: dict[str, Any]) -> str:
    """Name the format of a parsed tokenizer JSON: the native one, ``"hf"`` for HF files, else ``"unknown"``."""
    if "format" in obj:
        return str(obj["format"])
    if "model" in obj and isinstance(obj["model"], dict):
        return "hf"
    return "unknown"


def native_from_dict(obj: dict[str, Any], source: str = "<dict>") -> Tokenizer:
    """Build a ``Tokenizer`` from a parsed native dict, validating everything (errors name ``source``)."""
    if obj.get("format") != FORMAT_NAME:
        raise ValueError(f"{source}: format is {obj.get('format')!r}, expected {FORMAT_NAME!r}")
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{source}: unsupported {FORMAT_NAME} version {version!r}; this build reads version 1"
        )
    missing = [k for k in ("pattern", "merges", "special_tokens") if k not in obj]
    if missing:
        raise ValueError(f"{source}: missing required fields {missing}")
    merges = obj["merges"]
    if not isinstance(merges, list) or not all(
        isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m) for m in merges
    ):
        raise ValueError(f"{source}: 'merges' must be a list of [int, int] pairs")
    specials = obj["special_tokens"]
    if not isinstance(specials, dict) or not all(type(v) is int for v in specials.values()):
        raise ValueError(f"{source}: 'special_tokens' must be an object mapping strings to int ids")
    ids = list(specials.values())
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: two special tokens share an id: {specials}")
    metadata = obj.get("metadata") or {}
    chat_template = obj.get("chat_template")
    if not isinstance(metadata, dict) or not (chat_template is None or isinstance(chat_template, dict)):
        raise ValueError(f"{source}: 'metadata' must be an object and 'chat_template' an object or null")
    try:
        return Tokenizer(
            [(a, b) for a, b in merges],
            pattern=obj["pattern"],
            special_tokens=dict(sorted(specials.items(), key=lambda kv: kv[1])),
            chat_template=chat_template,
            metadata=metadata,
        )
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_native(path: str | Path) -> Tokenizer:
    """Load a native ``tokenizer.json`` or a directory that holds one."""
    file = _tokenizer_file(path)
    return native_from_dict(read_json(file), str(file))


LOADERS[FORMAT_NAME] = lambda file, obj: native_from_dict(obj, str(file))


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Load any tokenizer file this installation understands (native always; others via ``LOADERS``).

    Args:
        path: a tokenizer directory or its ``tokenizer.json``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: unreadable file or a format without a registered loader.
    """
    file = _tokenizer_file(path)
    obj = read_json(file)
    fmt = detect_format(obj)
    if fmt not in LOADERS and fmt in LAZY_LOADERS:
        try:
            importlib.import_module(LAZY_LOADERS[fmt])
        except ImportError as exc:
            raise ValueError(
                f"{file}: reading {fmt!r} tokenizers needs an optional dependency: {exc}"
            ) from None
    loader = LOADERS.get(fmt)
    if loader is None:
        raise ValueError(f"{file}: unsupported tokenizer format {fmt!r}; supported: {sorted(LOADERS)}")
    return loader(file, obj)
