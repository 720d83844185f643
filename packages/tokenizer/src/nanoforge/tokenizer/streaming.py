"""Streaming detokenization: turn token ids into text one id at a time, for token-by-token generation.

A multi-byte UTF-8 character (emoji, CJK, accented letters) can be split across several tokens. Decoding
each token on its own would print U+FFFD halves; this decoder keeps the incomplete tail bytes buffered and
only returns whole characters. Bytes that can never become valid UTF-8 turn into U+FFFD exactly as
``Tokenizer.decode`` would render them, so ``"".join(push(i) for i in ids) + flush() == decode(ids)``.

It does not look ahead at text level (no stop-string matching, no whitespace clean-up): that belongs to
the inference engine.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable


class StreamDecoder:
    """Incremental UTF-8 detokenizer over a ``token_id -> bytes`` function.

    Example:
        >>> dec = StreamDecoder(lambda i: bytes([i]))        # a byte-per-token vocabulary
        >>> [dec.push(b) for b in "é".encode()]             # 0xC3 0xA9: nothing until complete
        ['', 'é']
    """

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token id; return the text it completes (``""`` while a character is still partial)."""
        return self._decoder.decode(self._token_bytes(token_id), final=False)

    def flush(self) -> str:
        """End of stream: return the buffered remainder (an incomplete character becomes U+FFFD)."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text

    @property
    def pending_bytes(self) -> int:
        """Number of bytes held back because they do not yet form a complete character."""
        return len(self._decoder.getstate()[0])
