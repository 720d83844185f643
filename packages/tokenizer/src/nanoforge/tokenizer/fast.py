"""The fast encode path: hand our merge ranks to tiktoken's Rust core when tiktoken is installed.

Our ids are 0..255 for raw bytes, then one id per merge in training order, so the tiktoken ranks are simply
``{token_bytes(i): i}``. tiktoken merges by the rank of the *merged bytes* while the reference encoder
merges by *merge order*; the two agree for vocabularies trained by the standard algorithm with every token's
byte string unique. Training never creates a duplicate byte string; a vocabulary loaded from elsewhere
that has one gets no fast path (``reason`` says why).

This module only builds the ``tiktoken.Encoding``; ``core.Tokenizer`` decides when to use it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any


def tiktoken_available() -> bool:
    """True when the optional ``tiktoken`` package can be imported."""
    return importlib.util.find_spec("tiktoken") is not None


def duplicate_token_bytes(vocab: Sequence[bytes]) -> list[tuple[int, int]]:
    """Pairs ``(first_id, later_id)`` of tokens that stand for the same bytes (empty for a sound vocab).

    Example: ``[b"a", b"b", b"ab", b"ab"] -> [(2, 3)]``.
    """
    seen: dict[bytes, int] = {}
    dups = []
    for i, b in enumerate(vocab):
        if b in seen:
            dups.append((seen[b], i))
        else:
            seen[b] = i
    return dups


def build_tiktoken_encoding(
    name: str, pattern: str, vocab: Sequence[bytes], special_tokens: dict[str, int]
) -> tuple[Any | None, str]:
    """Build a ``tiktoken.Encoding`` from our vocabulary, or explain why not.

    Args:
        name: a label for the encoding (shown in its repr only).
        pattern: the split regex (tiktoken compiles it with fancy-regex).
        vocab: ``vocab[i]`` is the byte string of non-special token ``i`` (ranks = ids).
        special_tokens: special string -> id.

    Returns:
        ``(encoding, "")`` on success, or ``(None, reason)`` when the fast path cannot be used.
    """
    if not tiktoken_available():
        return None, "tiktoken is not installed (pip install 'nanoforge-tokenizer[fast]')"
    dups = duplicate_token_bytes(vocab)
    if dups:
        a, b = dups[0]
        return None, f"tokens {a} and {b} have the same bytes {vocab[a]!r}; byte-rank BPE would differ"
    import tiktoken

    ranks = {b: i for i, b in enumerate(vocab)}
    try:
        enc = tiktoken.Encoding(
            name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=dict(special_tokens)
        )
    except Exception as exc:  # e.g. a custom regex that fancy-regex cannot compile
        return None, f"tiktoken rejected the tokenizer: {type(exc).__name__}: {exc}"
    return enc, ""
