"""nanoforge.tokenizer: byte-level BPE you can read: train, encode/decode (pure Python or tiktoken's core),
stream-decode, save/load.

Public API::

    from nanoforge.tokenizer import Tokenizer, train_bpe, load_tokenizer, GPT2_PATTERN, GPT4_PATTERN, PATTERNS

Chat rendering (``chat.py``), HF formats (``hf.py``) and the CLI (``cli.py``) live in sibling modules.
"""

from nanoforge.tokenizer.core import Tokenizer
from nanoforge.tokenizer.io import export_tiktoken, load_tokenizer
from nanoforge.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS
from nanoforge.tokenizer.protocol import AllowedSpecial, StreamDecoderLike, TokenizerLike
from nanoforge.tokenizer.streaming import StreamDecoder
from nanoforge.tokenizer.train import train_bpe

__all__ = [
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "PATTERNS",
    "AllowedSpecial",
    "StreamDecoder",
    "StreamDecoderLike",
    "Tokenizer",
    "TokenizerLike",
    "export_tiktoken",
    "load_tokenizer",
    "train_bpe",
]
