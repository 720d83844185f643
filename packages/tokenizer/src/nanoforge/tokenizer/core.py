"""The ``Tokenizer``: a trained byte-level BPE (merges + split pattern + special tokens) that encodes/decodes.

Token ids: ``0..255`` are the raw bytes (so any text encodes: byte fallback by construction), then merge
``i`` creates id ``256 + i``, then the special tokens in insertion order. Two encoders give identical ids:

- ``encode_reference``: pure Python, readable. Split text with the pattern; for each piece start from its
  UTF-8 bytes and repeatedly merge the adjacent pair with the lowest merge rank (all its occurrences, left
  to right) until no pair is a merge. Results are cached per piece in a bounded dict.
- the fast path (``backend == "tiktoken"``): the same ranks handed to tiktoken's Rust core (see ``fast.py``).
  When a tokenizer is built, both paths encode ``PROBE_TEXT``; if they disagree (a custom pattern that
  tiktoken's regex engine reads differently) the fast path is dropped. For the named patterns they agree
  on arbitrary text (property-tested).

Special tokens: ``allowed_special="none"`` (default) encodes a special-token string found in text as ordinary
text, exactly like ``encode_ordinary``; it never raises and never injects a control token from user text.
``"all"`` or a set of strings turns those strings into their ids.

Not here: training (``train.py``), files (``io.py``), chat templates (``chat.py``), HF formats (``hf.py``).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import regex

from nanoforge.tokenizer.fast import build_tiktoken_encoding
from nanoforge.tokenizer.patterns import compile_pattern, resolve_pattern
from nanoforge.tokenizer.protocol import AllowedSpecial
from nanoforge.tokenizer.streaming import StreamDecoder

#: Entries kept in the per-piece cache of the reference encoder before it is cleared.
PIECE_CACHE_SIZE = 100_000
#: Encoded by both paths when a tokenizer is built; the fast path is only kept if they agree.
PROBE_TEXT = (
    "Hello, World! It's 2024: x=12345+0.5; ½ café naïve 東京 你好 🎉👩‍👩‍👧\n\n  \tindent  \r\n"
    "DON'T we'll I'M  trailing   \n<|endoftext|> ¿qué? — \u00a0nbsp \u2028 end\n"
)


def build_vocab(merges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Byte string of every non-special token: ``vocab[256 + i] = vocab[a] + vocab[b]`` for merge ``(a, b)``.

    Raises:
        ValueError: if a merge references an id that does not exist yet.
    """
    vocab = [bytes([i]) for i in range(256)]
    for i, pair in enumerate(merges):
        if len(pair) != 2:
            raise ValueError(f"merge {i} must be a pair of ids, got {pair!r}")
        a, b = pair
        n = len(vocab)
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < n and 0 <= b < n):
            raise ValueError(
                f"merge {i} = {list(pair)} references an unknown id; ids allowed so far: 0..{n - 1}"
            )
        vocab.append(vocab[a] + vocab[b])
    return vocab


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` (left to right) by ``new_id``.

    Example: ``merge_pair([1, 2, 3, 1, 2], (1, 2), 9) -> [9, 3, 9]``.
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class Tokenizer:
    """A byte-level BPE tokenizer (satisfies ``TokenizerLike``).

    Attributes:
        pattern: the split regex source.
        merges: merge ``i`` joins ``(a, b)`` into id ``256 + i``.
        special_tokens: special string -> id, ids right after the merges, in insertion order.
        chat_template: opaque JSON-able dict owned by ``chat.py`` (saved and loaded by ``io.py``).
        metadata: free-form JSON-able facts (training time, corpus size...), saved in the file.
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        *,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] | Mapping[str, int] = (),
        chat_template: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        use_fast: bool = True,
    ) -> None:
        """Build a tokenizer from merges.

        Args:
            merges: list of ``(a, b)`` id pairs, in training order.
            pattern: a name in ``PATTERNS`` or a custom split regex.
            special_tokens: strings (ids assigned in order after the merges) or a mapping whose ids must
                be exactly those consecutive ids.
            chat_template: opaque dict for ``chat.py``.
            metadata: free-form dict saved with the tokenizer.
            use_fast: use tiktoken's core for encoding when possible.

        Raises:
            ValueError: bad pattern, a merge with an unknown id, empty/duplicate special tokens or
                special ids that are not ``256 + len(merges) + i``.
        """
        self.pattern: str = resolve_pattern(pattern)
        try:
            self.merges: list[tuple[int, int]] = [(operator.index(a), operator.index(b)) for a, b in merges]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"merges must be a sequence of (int, int) pairs: {exc}") from None
        self._vocab: list[bytes] = build_vocab(self.merges)
        self._ranks: dict[tuple[int, int], int] = {p: 256 + i for i, p in enumerate(self.merges)}
        self.special_tokens: dict[str, int] = check_special_tokens(special_tokens, len(self._vocab))
        self.chat_template: dict[str, Any] | None = chat_template
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._id_bytes: list[bytes] = self._vocab + [s.encode("utf-8") for s in self.special_tokens]
        self._split = compile_pattern(self.pattern)
        self._special_res: dict[frozenset[str], regex.Pattern[str]] = {}
        self._cache: dict[str, list[int]] = {}
        self._fast: Any = None
        self.fast_unavailable_reason = "disabled by use_fast=False"
        skipped = self.metadata.get("skipped_duplicate_merges", 0)
        if use_fast and skipped:
            # tiktoken would merge such a pair by the bytes it makes; our merge table never does.
            self.fast_unavailable_reason = (
                f"training skipped {skipped} merge(s) that duplicated a token's bytes"
            )
        elif use_fast:
            self._fast, self.fast_unavailable_reason = build_tiktoken_encoding(
                "nanoforge", self.pattern, self._vocab, self.special_tokens
            )
        if self._fast is not None and self._fast.encode_ordinary(PROBE_TEXT) != self._encode_ordinary_python(
            PROBE_TEXT
        ):
            # A custom pattern that tiktoken's regex engine (fancy-regex) reads differently from `regex`.
            self._fast = None
            self.fast_unavailable_reason = "tiktoken splits the probe text differently for this pattern"
        # tiktoken's CoreBPE.encode_ordinary, without its Python wrapper (falls back to the public method).
        self._fast_ordinary: Any = getattr(
            getattr(self._fast, "_core_bpe", None), "encode_ordinary", None
        ) or (self._fast.encode_ordinary if self._fast is not None else None)

    # ----------------------------------------------------------------------------------------- info
    @property
    def vocab_size(self) -> int:
        """``256 + len(merges) + len(special_tokens)``."""
        return len(self._id_bytes)

    @property
    def backend(self) -> str:
        """``"tiktoken"`` when encoding runs in tiktoken's core, else ``"python"``."""
        return "tiktoken" if self._fast is not None else "python"

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special token: its UTF-8 string)."""
        try:
            index = operator.index(token_id)  # int or numpy integer; not float/str
        except TypeError:
            index = -1
        if not 0 <= index < len(self._id_bytes):
            raise ValueError(
                f"token id {token_id!r} out of range; valid ids are 0..{len(self._id_bytes) - 1}"
            )
        return self._id_bytes[index]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={list(self.special_tokens)}, backend={self.backend!r})"
        )

    # --------------------------------------------------------------------------------------- encode
    def encode(self, text: str, *, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Text -> ids. Special-token strings become ids only if ``allowed_special`` allows them.

        Args:
            text: the text.
            allowed_special: ``"none"`` (default: specials are encoded as plain text), ``"all"``, or a set
                of special-token strings.
        """
        fast = self._fast
        if fast is not None and allowed_special == "none" and type(text) is str:
            try:  # the hot path: straight into tiktoken's Rust core
                return self._fast_ordinary(text)
            except UnicodeEncodeError:  # lone surrogates: tiktoken's Python wrapper repairs them
                return fast.encode_ordinary(text)
        allowed = self._allowed(allowed_special)
        _check_text(text)
        if fast is not None:
            if not allowed:
                return fast.encode_ordinary(text)
            return fast.encode(text, allowed_special=allowed, disallowed_special=())
        return self._encode_python(text, allowed)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, never producing a special token."""
        return self.encode(text, allowed_special="none")

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: AllowedSpecial = "none", num_threads: int = 8
    ) -> list[list[int]]:
        """Encode many texts; with the fast path tiktoken spreads them over ``num_threads`` threads.

        The Python backend encodes them one after another (threads would not help under the GIL).
        """
        allowed = self._allowed(allowed_special)
        texts = list(texts)
        for t in texts:
            _check_text(t)
        if self._fast is not None:
            if not allowed:
                return self._fast.encode_ordinary_batch(texts, num_threads=num_threads)
            return self._fast.encode_batch(
                texts, num_threads=num_threads, allowed_special=allowed, disallowed_special=()
            )
        return [self._encode_python(t, allowed) for t in texts]

    def encode_reference(self, text: str, *, allowed_special: AllowedSpecial = "none") -> list[int]:
        """The pure-Python encoder, whatever the backend (the ground truth the fast path is tested against)."""
        allowed = self._allowed(allowed_special)
        _check_text(text)
        return self._encode_python(text, allowed)

    def _encode_python(self, text: str, allowed: frozenset[str]) -> list[int]:
        if not allowed:
            return self._encode_ordinary_python(text)
        special_re = self._special_res.get(allowed)
        if special_re is None:
            # Longest first so that "<|a|>x" wins over a shorter special that is its prefix.
            alternatives = sorted(allowed, key=lambda s: (-len(s), s))
            special_re = regex.compile("|".join(regex.escape(s) for s in alternatives))
            self._special_res[allowed] = special_re
        ids: list[int] = []
        start = 0
        for m in special_re.finditer(text):
            ids.extend(self._encode_ordinary_python(text[start : m.start()]))
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids.extend(self._encode_ordinary_python(text[start:]))
        return ids

    def _encode_ordinary_python(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: replace them by U+FFFD, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids: list[int] = []
        cache = self._cache
        for piece in self._split.findall(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self._bpe(piece.encode("utf-8"))
                if len(cache) >= PIECE_CACHE_SIZE:
                    cache.clear()
                cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids

    def _bpe(self, data: bytes) -> list[int]:
        """Merge the bytes of one piece by lowest merge rank until no adjacent pair is a merge."""
        ids = list(data)
        ranks = self._ranks
        never = len(self._vocab)  # larger than every rank
        while len(ids) >= 2:
            best = min(itertools.pairwise(ids), key=lambda p: ranks.get(p, never))
            new_id = ranks.get(best)
            if new_id is None:
                break
            ids = merge_pair(ids, best, new_id)
        return ids

    def _allowed(self, allowed_special: AllowedSpecial) -> frozenset[str]:
        if allowed_special == "none":
            return frozenset()
        if allowed_special == "all":
            return frozenset(self.special_tokens)
        if isinstance(allowed_special, str) or not hasattr(allowed_special, "__iter__"):
            raise ValueError(
                f"allowed_special must be 'none', 'all' or a set of special-token strings, got {allowed_special!r}"
            )
        allowed = frozenset(allowed_special)
        unknown = sorted(allowed - self.special_tokens.keys())
        if unknown:
            raise ValueError(
                f"allowed_special names unknown special tokens {unknown}; known: {list(self.special_tokens)}"
            )
        return allowed

    # --------------------------------------------------------------------------------------- decode
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes they stand for (may be invalid UTF-8)."""
        ids = list(ids)
        try:
            if not ids or min(ids) >= 0:  # a negative id would silently index from the end
                return b"".join([self._id_bytes[i] for i in ids])
        except (IndexError, TypeError):
            pass
        for i in ids:  # slow path, only to name the bad id
            self.token_bytes(i)
        raise AssertionError("unreachable: token_bytes raised for the bad id")

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """A fresh incremental decoder (see ``streaming.py``)."""
        return StreamDecoder(self.token_bytes)

    # ------------------------------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/tokenizer.json`` (native format) and ``vocab.txt``; returns the json path."""
        from nanoforge.tokenizer.io import save_tokenizer

        return save_tokenizer(self, directory)

    @classmethod
    def load(cls, directory_or_file: str | Path) -> Tokenizer:
        """Load a native ``tokenizer.json`` (or a directory holding one)."""
        from nanoforge.tokenizer.io import load_native

        return load_native(directory_or_file)


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")


def check_special_tokens(special_tokens: Sequence[str] | Mapping[str, int], first_id: int) -> dict[str, int]:
    """Validate special tokens and number them from ``first_id`` in order.

    Example: ``check_special_tokens(["<a>", "<b>"], 300) -> {"<a>": 300, "<b>": 301}``.

    Raises:
        ValueError: a bare string, an empty or duplicate token, or (for a mapping) other ids.
    """
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a list of strings, got the string {special_tokens!r}")
    names = list(special_tokens)
    for s in names:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
    if len(set(names)) != len(names):
        dup = next(s for s in names if names.count(s) > 1)
        raise ValueError(f"duplicate special token {dup!r} in {names}")
    result = {s: first_id + i for i, s in enumerate(names)}
    if isinstance(special_tokens, Mapping):
        given = {s: special_tokens[s] for s in names}
        if given != result:
            raise ValueError(
                f"special token ids must follow the merges in order ({first_id}, {first_id + 1}, ...), got {given}"
            )
    return result
