"""Hugging Face tokenizers behind ``TokenizerLike``: import (``load_hf_tokenizer``) and ``load_any_tokenizer``.

``HFTokenizer`` wraps a ``tokenizers.Tokenizer`` read from a local ``tokenizer.json`` (plus the
``tokenizer_config.json`` beside it: bos/eos tokens, ``add_bos_token``, the Jinja ``chat_template``). Two
BPE families are supported, each with its own rule for the bytes behind an id (``BYTE_RULES``):

- byte-level BPE (GPT-2, Llama-3, Qwen2 and our own export): a token string spells its bytes with GPT-2's
  byte<->unicode map (``"Ġhi"`` -> ``b" hi"``);
- SentencePiece-style BPE with ``byte_fallback`` (Llama-2, Mistral): ``"▁"`` stands for a space and the
  tokens ``<0x00>``..``<0xFF>`` are single raw bytes.

Real bytes per id are what the streaming decoder and constrained decoding need. Special-token strings in
text become ids only when ``allowed_special`` allows them: ``"none"`` encodes with a second tokenizer
built from the same file minus the special added tokens, so user text cannot inject ``</s>``.

``decode`` is HF's own (exact parity); ``stream_decoder`` works on ``token_bytes`` and joins to the same
text, except for one HF quirk: a run of ``<0xNN>`` tokens that is not valid UTF-8 decodes in HF to one
U+FFFD per token, in the stream decoder to one per maximal invalid subsequence (as Python does).

``encode`` never adds BOS/EOS on its own (the chat template or the caller does). Not supported: WordPiece
and Unigram models, and BPE vocabularies that are neither byte-level nor byte-fallback (``ValueError``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from nanoforge.tokenizer.hf_export import HF_CONFIG_FILE, HF_TOKENIZER_FILE, export_hf, unicode_to_bytes
from nanoforge.tokenizer.io import LOADERS, detect_format, load_tokenizer, read_json
from nanoforge.tokenizer.protocol import AllowedSpecial
from nanoforge.tokenizer.streaming import StreamDecoder

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


# ------------------------------------------------------------------------------------- byte rules
def _byte_level_bytes(token: str) -> bytes:
    table = unicode_to_bytes()
    if all(c in table for c in token):
        return bytes(table[c] for c in token)
    return token.encode("utf-8")  # a token outside the byte alphabet: take its text


def _byte_fallback_bytes(token: str) -> bytes:
    m = _BYTE_TOKEN.fullmatch(token)
    if m:
        return bytes([int(m.group(1), 16)])
    return token.replace("▁", " ").encode("utf-8")


#: Style name -> rule mapping a model-vocabulary token string to the bytes it stands for.
BYTE_RULES: dict[str, Callable[[str], bytes]] = {
    "byte_level": _byte_level_bytes,
    "byte_fallback": _byte_fallback_bytes,
}


def _components(node: Any) -> list[dict[str, Any]]:
    """Flatten a (possibly Sequence) pre-tokenizer/decoder spec into its parts."""
    if not isinstance(node, dict):
        return []
    children = node.get("pretokenizers") or node.get("decoders") or node.get("normalizers")
    if node.get("type") == "Sequence" and isinstance(children, list):
        return [part for child in children for part in _components(child)]
    return [node]


def detect_style(spec: dict[str, Any]) -> str:
    """Name the byte rule of a parsed HF ``tokenizer.json`` (a key of ``BYTE_RULES``).

    Raises:
        ValueError: not a BPE model, or a BPE that is neither byte-level nor byte-fallback.
    """
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(
            f"unsupported HF model type {model.get('type')!r}; accepted: BPE (byte-level or byte_fallback)"
        )
    parts = _components(spec.get("pre_tokenizer")) + _components(spec.get("decoder"))
    if any(p.get("type") == "ByteLevel" for p in parts):
        return "byte_level"
    if model.get("byte_fallback"):
        return "byte_fallback"
    raise ValueError("unsupported HF BPE: neither ByteLevel nor byte_fallback, so ids have no defined bytes")


def _leading_space_rule(spec: dict[str, Any]) -> str | None:
    """How HF's decoder removes the space SentencePiece put in front of the text.

    ``"strip"``: a ``Strip(" ", start=1)`` decoder drops one leading space of the whole output (Llama-2).
    ``"metaspace"``: a ``Metaspace`` decoder drops every "▁" of the *first token* (Mistral, newer files).
    ``None``: nothing is removed.
    """
    for part in _components(spec.get("decoder")):
        if part.get("type") == "Strip" and part.get("content") == " " and int(part.get("start", 0)) >= 1:
            return "strip"
        if part.get("type") == "Metaspace":
            scheme = part.get("prepend_scheme", "always" if part.get("add_prefix_space", True) else "never")
            return "metaspace" if scheme != "never" else None
    return None


class _LeadingSpaceStream:
    """Stream decoder that drops one leading space of the output, as Llama-2's ``Strip`` decoder does."""

    def __init__(self, inner: StreamDecoder) -> None:
        self._inner = inner
        self._started = False

    def _emit(self, text: str) -> str:
        if not self._started and text:
            self._started = True
            return text[1:] if text.startswith(" ") else text
        return text

    def push(self, token_id: int) -> str:
        return self._emit(self._inner.push(token_id))

    def flush(self) -> str:
        return self._emit(self._inner.flush())


class _FirstTokenBytes:
    """``token_bytes`` for a stream whose first token loses its "▁" characters (HF's Metaspace decoder)."""

    def __init__(self, tok: HFTokenizer) -> None:
        self._tok = tok
        self._first = True

    def __call__(self, token_id: int) -> bytes:
        data = self._tok.token_bytes(token_id)
        if self._first:
            self._first = False
            token = self._tok._tok.id_to_token(token_id)
            if (
                token is not None
                and token_id not in self._tok._added_ids
                and not _BYTE_TOKEN.fullmatch(token)
            ):
                data = _byte_fallback_bytes(token.replace("▁", ""))
        return data


def _token_content(value: Any) -> str | None:
    """HF configs store a token as a string or as ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pick_chat_template(value: Any) -> str | None:
    """``chat_template`` may be a string or a list of ``{"name", "template"}``; prefer ``default``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        chosen = named.get("default") or next(iter(named.values()), None)
        return chosen if isinstance(chosen, str) else None
    return None


# ------------------------------------------------------------------------------------- the wrapper
class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (byte-level or byte-fallback BPE) that satisfies ``TokenizerLike``.

    Attributes:
        chat_template: the Jinja template from ``tokenizer_config.json`` (or ``None``).
        bos_token, eos_token: token strings from the config (or ``None``); ``bos_id``/``eos_id`` their ids.
        add_bos_token: whether the model expects BOS in front of every sequence.
        style: ``"byte_level"`` or ``"byte_fallback"``.
    """

    def __init__(
        self, spec: dict[str, Any], config: dict[str, Any] | None = None, source: str = "<dict>"
    ) -> None:
        """Build from a parsed ``tokenizer.json`` dict and an optional parsed ``tokenizer_config.json``.

        Raises:
            ValueError: unsupported model, or ``tokenizers`` rejects the spec.
        """
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError as exc:  # pragma: no cover - tokenizers is a declared dependency of the hf extra
            raise ImportError("HF tokenizers need the 'tokenizers' package: pip install tokenizers") from exc
        self.source = source
        self.style = detect_style(spec)
        added = [a for a in spec.get("added_tokens") or [] if isinstance(a, dict)]
        plain_spec = dict(spec, added_tokens=[a for a in added if not a.get("special")])
        try:
            self._tok = _HF.from_str(json.dumps(spec))
            self._plain = _HF.from_str(json.dumps(plain_spec))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise ValueError(f"{source}: the tokenizers library cannot read it: {exc}") from None
        self._special_tokens = {a["content"]: int(a["id"]) for a in added if a.get("special")}
        self._special_res: dict[frozenset[str], re.Pattern[str]] = {}
        self._space_rule = _leading_space_rule(spec) if self.style == "byte_fallback" else None
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self._size = max(vocab.values(), default=-1) + 1
        added_ids = {int(a["id"]): a["content"] for a in added}
        self._added_ids = frozenset(added_ids)
        rule = BYTE_RULES[self.style]
        self._bytes = [b""] * self._size
        for token, i in vocab.items():
            self._bytes[i] = added_ids[i].encode("utf-8") if i in added_ids else rule(token)
        config = config or {}
        self.chat_template: str | None = _pick_chat_template(config.get("chat_template"))
        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        self.pad_token = _token_content(config.get("pad_token"))
        self.unk_token = _token_content(config.get("unk_token"))
        self.bos_id = vocab.get(self.bos_token) if self.bos_token else None
        self.eos_id = vocab.get(self.eos_token) if self.eos_token else None
        self.add_bos_token = bool(config.get("add_bos_token", False))

    def __repr__(self) -> str:
        return f"HFTokenizer(source={self.source!r}, style={self.style!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (added tokens included)."""
        return self._size

    @property
    def special_tokens(self) -> dict[str, int]:
        """Added tokens marked ``special`` in the file: string -> id."""
        return dict(self._special_tokens)

    # ------------------------------------------------------------------------------------- encode
    def _allowed(self, allowed_special: AllowedSpecial) -> frozenset[str]:
        if allowed_special == "none":
            return frozenset()
        if allowed_special == "all":
            return frozenset(self._special_tokens)
        if isinstance(allowed_special, str) or not hasattr(allowed_special, "__iter__"):
            raise ValueError(
                f"allowed_special must be 'none', 'all' or a set of strings, got {allowed_special!r}"
            )
        allowed = frozenset(allowed_special)
        unknown = sorted(allowed - self._special_tokens.keys())
        if unknown:
            raise ValueError(f"allowed_special names unknown special tokens {unknown}")
        return allowed

    def encode(self, text: str, *, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Text -> ids (no BOS/EOS added). Special strings become ids only if allowed."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        allowed = self._allowed(allowed_special)
        if not allowed:
            return list(self._plain.encode(text, add_special_tokens=False).ids)
        if allowed == frozenset(self._special_tokens):
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        pattern = self._special_res.get(allowed)
        if pattern is None:
            pattern = re.compile("|".join(re.escape(s) for s in sorted(allowed, key=len, reverse=True)))
            self._special_res[allowed] = pattern
        ids: list[int] = []
        start = 0
        for m in pattern.finditer(text):
            if m.start() > start:
                ids += self._plain.encode(text[start : m.start()], add_special_tokens=False).ids
            ids.append(self._special_tokens[m.group(0)])
            start = m.end()
        if start < len(text):
            ids += self._plain.encode(text[start:], add_special_tokens=False).ids
        return ids

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: AllowedSpecial = "none"
    ) -> list[list[int]]:
        """Encode many texts (HF's Rust batch path when no subset of specials is requested)."""
        allowed = self._allowed(allowed_special)
        if not allowed or allowed == frozenset(self._special_tokens):
            tok = self._tok if allowed else self._plain
            return [list(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    def encode_with_offsets(self, text: str) -> list[tuple[int, int, int]]:
        """``(id, start_char, end_char)`` per token, specials never recognised (used by chat masks)."""
        enc = self._plain.encode(text, add_special_tokens=False)
        return [(i, a, b) for i, (a, b) in zip(enc.ids, enc.offsets)]

    # ------------------------------------------------------------------------------------- decode
    def _check_ids(self, ids: list[int]) -> None:
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < self._size:
                raise ValueError(f"token id {i!r} out of range; valid ids are 0..{self._size - 1}")

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text exactly as ``tokenizers`` decodes them (special tokens kept)."""
        ids = list(ids)
        self._check_ids(ids)
        return str(self._tok.decode(ids, skip_special_tokens=False))

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one id stands for (``▁`` as a space, ``<0xNN>`` as that byte, specials as text)."""
        self._check_ids([token_id])
        return self._bytes[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> concatenated raw bytes (no leading-space clean-up)."""
        ids = list(ids)
        self._check_ids(ids)
        return b"".join(self._bytes[i] for i in ids)

    def stream_decoder(self) -> StreamDecoder | _LeadingSpaceStream:
        """Incremental decoder over ``token_bytes``; output joins to ``decode(ids)``."""
        if self._space_rule == "metaspace":
            return StreamDecoder(_FirstTokenBytes(self))
        inner = StreamDecoder(self.token_bytes)
        return _LeadingSpaceStream(inner) if self._space_rule == "strip" else inner


# ------------------------------------------------------------------------------------- loading
def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        # A tokenizer directory, or a model directory that keeps its tokenizer in tokenizer/.
        nested = path / "tokenizer" / HF_TOKENIZER_FILE
        direct = path / HF_TOKENIZER_FILE
        path = nested if nested.is_file() and not direct.is_file() else direct
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    return path


def load_hf_tokenizer(dir_or_file: str | Path) -> HFTokenizer:
    """Load an HF ``tokenizer.json`` (and ``tokenizer_config.json`` beside it, if present).

    Raises:
        FileNotFoundError: no ``tokenizer.json`` there.
        ValueError: unreadable JSON or an unsupported tokenizer.
    """
    file = _resolve(dir_or_file)
    spec = read_json(file)
    config_file = file.parent / HF_CONFIG_FILE
    config = read_json(config_file) if config_file.is_file() else {}
    return HFTokenizer(spec, config, source=str(file))


LOADERS["hf"] = lambda file, obj: HFTokenizer(
    obj,
    read_json(file.parent / HF_CONFIG_FILE) if (file.parent / HF_CONFIG_FILE).is_file() else {},
    source=str(file),
)


def load_any_tokenizer(path: str | Path) -> Any:
    """Load a native nanoforge tokenizer or an HF one, whichever ``path`` holds.

    ``path`` may be a ``tokenizer.json``, its directory, or a model directory with a ``tokenizer/``
    sub-directory.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a JSON file in neither format.
    """
    file = _resolve(path)
    fmt = detect_format(read_json(file))
    if fmt not in LOADERS:
        raise ValueError(
            f"{file}: not a tokenizer file this build reads (format {fmt!r}); accepted: {sorted(LOADERS)}"
        )
    return load_tokenizer(file)


__all__ = [
    "BYTE_RULES",
    "HFTokenizer",
    "detect_style",
    "export_hf",
    "load_any_tokenizer",
    "load_hf_tokenizer",
]
