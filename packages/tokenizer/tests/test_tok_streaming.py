"""Streaming decode: only whole characters come out, and the stream adds up to ``decode``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoforge.tokenizer import StreamDecoderLike, Tokenizer, train_bpe

TEXT = "héllo 🎉 東京 👩‍👩‍👧 Ωmega 你好"


@pytest.fixture(scope="module")
def bytes_tok() -> Tokenizer:
    """No merges: every byte is its own token, so multi-byte characters are always split."""
    return Tokenizer([], special_tokens=["<|eot|>"])


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return train_bpe(texts=[TEXT * 30 + " the cat sat on the mat " * 50], vocab_size=400, show_progress=False)


def test_split_characters_never_yield_replacement_mid_stream(bytes_tok: Tokenizer) -> None:
    dec = bytes_tok.stream_decoder()
    assert isinstance(dec, StreamDecoderLike)
    ids = bytes_tok.encode(TEXT)
    assert len(ids) == len(TEXT.encode())
    pieces = [dec.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + dec.flush() == TEXT
    # The 4 bytes of 🎉 give "", "", "", "🎉".
    dec = bytes_tok.stream_decoder()
    assert [dec.push(b) for b in "🎉".encode()] == ["", "", "", "🎉"]


def test_pending_bytes_and_flush_of_incomplete_character(bytes_tok: Tokenizer) -> None:
    dec = bytes_tok.stream_decoder()
    assert dec.push(0xE6) == "" and dec.push(0x9D) == ""
    assert dec.pending_bytes == 2
    assert dec.flush() == "\ufffd"  # the stream ended inside a character
    assert dec.pending_bytes == 0
    assert dec.push(ord("x")) == "x"  # usable again after flush


def test_special_tokens_stream_as_text(bytes_tok: Tokenizer) -> None:
    dec = bytes_tok.stream_decoder()
    eot = bytes_tok.special_tokens["<|eot|>"]
    assert dec.push(0xC3) == ""
    assert dec.push(eot) == "\ufffd<|eot|>"  # the cut character is invalid once a token follows
    assert bytes_tok.decode([0xC3, eot]) == "\ufffd<|eot|>"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_property_stream_equals_decode_for_valid_text(trained: Tokenizer, text: str) -> None:
    ids = trained.encode(text)
    dec = trained.stream_decoder()
    pieces = [dec.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text
    assert "".join(pieces) + dec.flush() == text


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_property_stream_equals_decode_for_any_ids(trained: Tokenizer, data: st.DataObject) -> None:
    ids = data.draw(st.lists(st.integers(min_value=0, max_value=trained.vocab_size - 1), max_size=40))
    dec = trained.stream_decoder()
    assert "".join(dec.push(i) for i in ids) + dec.flush() == trained.decode(ids)


def test_bad_id_raises(bytes_tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="out of range"):
        bytes_tok.stream_decoder().push(10_000)
