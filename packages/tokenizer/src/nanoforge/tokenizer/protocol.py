"""The interface every tokenizer in nanoforge offers, whether trained here or imported from HF.

Training, serving and evaluation code type against ``TokenizerLike`` only, so a native byte-level BPE
tokenizer and an imported Llama-2/Mistral/Qwen2 tokenizer are interchangeable. This module defines the
contract; it implements nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from typing import Literal, Protocol, runtime_checkable

#: Which special tokens ``encode`` may recognise in text: none (the safe default for user text),
#: all of them, or an explicit set of their strings.
AllowedSpecial = Literal["none", "all"] | Set[str]


@runtime_checkable
class StreamDecoderLike(Protocol):
    """Incremental detokenizer: feed ids one at a time, get only complete UTF-8 text back."""

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly ``""``)."""
        ...

    def flush(self) -> str:
        """Return whatever is still buffered (incomplete bytes become U+FFFD)."""
        ...


@runtime_checkable
class TokenizerLike(Protocol):
    """What every nanoforge tokenizer provides."""

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are ``0 .. vocab_size - 1``)."""
        ...

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token string -> id."""
        ...

    def encode(self, text: str, *, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Text -> ids. Special-token strings in ``text`` become ids only if allowed."""
        ...

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: AllowedSpecial = "none"
    ) -> list[list[int]]:
        """Encode many texts (may use threads or a native batch path)."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; invalid UTF-8 becomes U+FFFD."""
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one id stands for (special tokens: their UTF-8 string)."""
        ...

    def stream_decoder(self) -> StreamDecoderLike:
        """A fresh incremental decoder for streaming generation."""
        ...
