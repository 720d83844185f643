"""Pre-tokenization split patterns: the regexes that cut text into pieces before BPE runs.

BPE merges never cross a piece boundary, so the pattern decides what a token can be (a word with its
leading space, a run of up to three digits, a punctuation run...). This module names the two standard
patterns and compiles/validates custom ones. It does not run BPE.

Both named patterns are the exact strings tiktoken uses for ``gpt2`` and ``cl100k_base``, so the
pure-Python path (the ``regex`` module) and the tiktoken fast path (Rust ``fancy-regex``) split alike.
"""

from __future__ import annotations

import functools

import regex

#: GPT-2's split pattern: contractions, letters, numbers, punctuation runs, whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

#: GPT-4's (cl100k) split pattern: case-insensitive contractions, digit runs of at most 3, a
#: punctuation run may carry trailing newlines, and a newline run is its own piece.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

#: Named patterns accepted wherever a pattern is expected.
PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(pattern: str) -> str:
    """Return the regex source for a pattern name (``"gpt2"``, ``"gpt4"``) or a custom regex string.

    Args:
        pattern: a key of :data:`PATTERNS` or a regex source string.

    Returns:
        The regex source string.

    Raises:
        ValueError: if ``pattern`` is empty or not a valid regex (the message names both).
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(
            f"pattern must be a name in {sorted(PATTERNS)} or a non-empty regex, got {pattern!r}"
        )
    source = PATTERNS.get(pattern, pattern)
    compile_pattern(source)
    return source


@functools.lru_cache(maxsize=32)
def compile_pattern(source: str) -> regex.Pattern[str]:
    """Compile a split regex with the ``regex`` module (cached).

    Raises:
        ValueError: naming the pattern and the regex error when it does not compile.
    """
    try:
        return regex.compile(source)
    except regex.error as exc:
        raise ValueError(f"invalid split pattern {source!r}: {exc}") from None
