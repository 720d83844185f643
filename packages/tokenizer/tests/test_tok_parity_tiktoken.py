"""Parity with tiktoken itself: export our ranks, load them with tiktoken's own loader, same ids."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoforge.tokenizer import Tokenizer, export_tiktoken, train_bpe

tiktoken = pytest.importorskip("tiktoken")
from tiktoken.load import load_tiktoken_bpe  # noqa: E402

SPECIALS = ("<|endoftext|>", "<|fim_prefix|>")
EDGE_CASES = [
    "",
    "hello",
    "🎉 emoji 🎉🎉",
    "漢字と日本語",
    "  \n\n\t  x",
    "99999999 1,234",
    "a\r\nb\rc\n",
    "<|endoftext|>",
]


def corpus() -> str:
    rng = random.Random(5)
    vocab = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "return",
        "import",
        "from",
        "class",
        "def",
        "self",
        "None",
        "True",
        "東京",
        "你好",
        "🎉",
        "éè",
        "0",
        "12",
        "345",
    ]
    return "".join(
        rng.choice(vocab) + rng.choice([" ", "\n", "  ", "(", "):\n    ", ", "]) for _ in range(5000)
    )


@pytest.fixture(scope="module", params=["gpt4", "gpt2"])
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Tokenizer, object]:
    """Our tokenizer, and a tiktoken Encoding built only from the exported ``.tiktoken`` file."""
    tok = train_bpe(
        texts=[corpus()], vocab_size=800, pattern=request.param, special_tokens=SPECIALS, show_progress=False
    )
    path = export_tiktoken(tok, tmp_path_factory.mktemp("tiktoken") / "ours.tiktoken")
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the file directly, never cache it in /tmp
    ranks = load_tiktoken_bpe(str(path))
    mp.undo()
    assert ranks == {tok.token_bytes(i): i for i in range(len(ranks))}
    enc = tiktoken.Encoding(
        "ours", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=tok.special_tokens
    )
    return tok, enc


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_match_tiktoken(pair: tuple[Tokenizer, object], text: str) -> None:
    tok, enc = pair
    assert tok.encode_reference(text) == enc.encode_ordinary(text)  # type: ignore[attr-defined]
    assert tok.encode_reference(text, allowed_special="all") == enc.encode(text, allowed_special="all")  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_property_reference_encoder_matches_tiktoken(pair: tuple[Tokenizer, object], text: str) -> None:
    tok, enc = pair
    ids = tok.encode_reference(text)
    assert ids == enc.encode_ordinary(text)  # type: ignore[attr-defined]
    assert enc.decode(ids) == tok.decode(ids)  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=15), st.sampled_from(SPECIALS)), max_size=6))
def test_property_specials_match_tiktoken(pair: tuple[Tokenizer, object], parts: list[str]) -> None:
    tok, enc = pair
    text = "".join(parts)
    assert tok.encode_reference(text, allowed_special="all") == enc.encode(text, allowed_special="all")  # type: ignore[attr-defined]


def test_training_corpus_and_batch_match_tiktoken(pair: tuple[Tokenizer, object]) -> None:
    tok, enc = pair
    texts = corpus().split("\n")[:200]
    assert [tok.encode_reference(t) for t in texts] == enc.encode_ordinary_batch(texts, num_threads=2)  # type: ignore[attr-defined]
    assert tok.encode_batch(texts) == enc.encode_ordinary_batch(texts)  # type: ignore[attr-defined]


def test_exported_file_is_what_tiktoken_reads(pair: tuple[Tokenizer, object], tmp_path: Path) -> None:
    tok, _ = pair
    path = export_tiktoken(tok, tmp_path / "x.tiktoken")
    first = path.read_text(encoding="ascii").splitlines()[0]
    assert first == "AA== 0"  # base64 of byte 0, rank 0
