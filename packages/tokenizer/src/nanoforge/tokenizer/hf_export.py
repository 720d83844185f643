"""Export a native tokenizer as a Hugging Face ``tokenizer.json`` + ``tokenizer_config.json``.

The HF ``tokenizers`` library stores byte-level BPE as *strings*: every byte is shown as one printable
Unicode character (GPT-2's byte<->unicode map: printable Latin-1 bytes stand for themselves, the other 68
bytes are shifted to U+0100 and up), a token is the concatenation of its bytes' characters, and a merge
is written ``"left right"``. The pipeline we write is::

    pre_tokenizer = Sequence[Split(our regex*, Isolated), ByteLevel(add_prefix_space=False, use_regex=False)]
    model         = BPE(vocab, merges)            # ids identical to ours, merges in our rank order
    decoder       = ByteLevel
    added_tokens  = our special tokens (special=True, normalized=False)

(* rewritten for Oniguruma by ``to_oniguruma``) so ``tokenizers.Tokenizer.from_file`` encodes text to exactly our ids (tested with hypothesis). The JSON is
written by hand (no ``tokenizers`` import needed to export) and atomically. A native chat template is
exported as an equivalent Jinja ``chat_template`` in ``tokenizer_config.json``.

Not here: importing HF files (``hf.py``), tiktoken export (``io.export_tiktoken``).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from nanoforge.tokenizer.io import write_atomic

HF_TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"


def _atom_end(src: str, i: int) -> int:
    """Index just past the regex atom that starts at ``src[i]`` (escape, class, group or one char)."""
    c = src[i]
    if c == "\\":
        if i + 2 < len(src) and src[i + 1] in "pPxNu" and src[i + 2] == "{":
            return src.index("}", i) + 1
        if i + 2 < len(src) and src[i + 1] in "pP":
            return i + 3  # \pL
        return i + 2
    if c == "[":
        j = i + 1
        if j < len(src) and src[j] == "^":
            j += 1
        if j < len(src) and src[j] == "]":
            j += 1  # a leading "]" is literal
        depth = 1
        while depth:
            if src[j] == "\\":
                j += 2
                continue
            if src[j] == "[":
                depth += 1
            elif src[j] == "]":
                depth -= 1
            j += 1
        return j
    if c == "(":
        depth, j = 1, i + 1
        while depth:
            if src[j] == "\\":
                j += 2
                continue
            if src[j] == "[":
                j = _atom_end(src, j)
                continue
            depth += {"(": 1, ")": -1}.get(src[j], 0)
            j += 1
        return j
    return i + 1


def to_oniguruma(pattern: str) -> str:
    """Rewrite a ``regex``-module pattern for HF's Oniguruma (Ruby syntax), keeping its meaning.

    Ruby syntax reads ``X{1,3}+`` as ``(X{1,3})+`` (one or more runs), not as a possessive ``{1,3}``, so
    a possessive bounded repeat becomes an atomic group: ``\\p{N}{1,3}+`` -> ``(?>\\p{N}{1,3})``. Other
    constructs of our patterns (``\\p{..}``, ``?+``, ``++``, ``*+``, ``(?i:..)``) mean the same in both.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        end = _atom_end(pattern, i)
        atom = pattern[i:end]
        m = re.match(r"\{\d*(?:,\d*)?\}\+", pattern[end:])
        if m and atom not in ("|", "(", ")") and m.group(0) != "{}+":
            out.append(f"(?>{atom}{m.group(0)[:-1]})")
            i = end + len(m.group(0))
            continue
        if atom.startswith("(") and len(atom) > 1:
            head = re.match(r"\((?:\?(?:[:=!>]|<[=!]|<\w+>|P<\w+>|[a-zA-Z-]+:))?", atom)
            prefix_len = head.end() if head else 1
            out.append(atom[:prefix_len] + to_oniguruma(atom[prefix_len:-1]) + ")")
        else:
            out.append(atom)
        i = end
    return "".join(out)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: ``0x21 '!' -> '!'``, ``0x20 ' ' -> 'Ġ'``.

    Bytes that are printable in Latin-1 (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the
    remaining 68 (controls, space, 0x7F-0xA0, 0xAD) map in order to U+0100, U+0101, ...
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + shifted)
            shifted += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of :func:`bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_hf_string(data: bytes) -> str:
    """Bytes of a token -> its byte-level string: ``b" hi" -> "Ġhi"``."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def hf_tokenizer_dict(tok: Any) -> dict[str, Any]:
    """The HF ``tokenizer.json`` object for a native ``Tokenizer``.

    Raises:
        ValueError: two ids with the same bytes (HF's vocab is keyed by string, so it cannot hold both).
    """
    n_regular = tok.vocab_size - len(tok.special_tokens)
    vocab: dict[str, int] = {}
    for i in range(n_regular):
        key = token_to_hf_string(tok.token_bytes(i))
        if key in vocab:
            raise ValueError(
                f"tokens {vocab[key]} and {i} have the same bytes; HF's string-keyed vocab cannot hold both"
            )
        vocab[key] = i
    strings = [token_to_hf_string(tok.token_bytes(i)) for i in range(n_regular)]
    merges = [f"{strings[a]} {strings[b]}" for a, b in tok.merges]
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": to_oniguruma(tok.pattern)},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def hf_config_dict(tok: Any, *, model_max_length: int = 1_000_000) -> dict[str, Any]:
    """The ``tokenizer_config.json`` object: token roles, added-token table and the Jinja chat template."""
    specials = tok.special_tokens
    template = getattr(tok, "chat_template", None)
    bos = template.get("bos") if isinstance(template, dict) else None
    eos = template.get("turn_end") if isinstance(template, dict) else None
    if eos is None and "<|endoftext|>" in specials:
        eos = "<|endoftext|>"
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": "<|endoftext|>" if "<|endoftext|>" in specials else None,
        "unk_token": None,
        "added_tokens_decoder": {
            str(i): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for s, i in specials.items()
        },
    }
    if isinstance(template, dict):
        from nanoforge.tokenizer.chat_jinja import native_to_jinja

        config["chat_template"] = native_to_jinja(template)
    return config


def export_hf(tok: Any, out_dir: str | Path, *, model_max_length: int = 1_000_000) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (HF formats) into ``out_dir``.

    Args:
        tok: a native nanoforge ``Tokenizer``.
        out_dir: the directory to write (created if needed). Do not point it at the native tokenizer's
            own directory: both formats are called ``tokenizer.json``.
        model_max_length: written to the config (HF warns on longer inputs).

    Returns:
        The path of the HF ``tokenizer.json``.

    Raises:
        ValueError: ``out_dir`` already holds a native nanoforge tokenizer, or the vocab cannot be exported.
    """
    out = Path(out_dir)
    existing = out / HF_TOKENIZER_FILE
    if existing.is_file():
        try:
            fmt = json.loads(existing.read_text(encoding="utf-8")).get("format")
        except (ValueError, UnicodeDecodeError, AttributeError):
            fmt = None
        if fmt == "nanoforge-tokenizer":
            raise ValueError(
                f"{out} holds a native nanoforge tokenizer.json; export HF files to another directory"
            )
    body = json.dumps(hf_tokenizer_dict(tok), ensure_ascii=False, indent=2)
    config = json.dumps(hf_config_dict(tok, model_max_length=model_max_length), ensure_ascii=False, indent=2)
    path = write_atomic(out / HF_TOKENIZER_FILE, body.encode("utf-8"))
    write_atomic(out / HF_CONFIG_FILE, config.encode("utf-8"))
    return path
