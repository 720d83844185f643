"""Chunkers keep exact offsets, respect the token cap and overlap, and follow their structure rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoforge.retriever.chunking import CHUNKERS, ChunkerSpec, build_chunker, word_spans
from nanoforge.retriever.embedders import HashingEmbedder

EMBED = HashingEmbedder(64).embed


def _count(text: str) -> int:
    return len(word_spans(text))


def _build(strategy: str, size: int, overlap: int):
    return build_chunker(ChunkerSpec(strategy, size, overlap, parent_tokens=size * 4), embed=EMBED)


_pieces = st.sampled_from(
    ["ab", "c", " ", "de.", "!", "? ", "\n", "\n\n", "## H\n", "```\n", "é", "猫", "  "]
)
_texts = st.lists(_pieces, max_size=120).map("".join)


@settings(max_examples=60, deadline=None)
@given(
    text=_texts,
    strategy=st.sampled_from(sorted(CHUNKERS)),
    size=st.integers(2, 20),
    overlap=st.integers(0, 5),
)
def test_offsets_are_exact_and_sizes_capped(text: str, strategy: str, size: int, overlap: int) -> None:
    overlap = min(overlap, size - 1)
    chunks = _build(strategy, size, overlap)(text)
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert 1 <= _count(c.text) <= size
        if c.parent is not None:
            assert c.parent[0] <= c.start and c.end <= c.parent[1]
    # Every token of the text is covered by some chunk (nothing silently dropped).
    covered = np.zeros(len(text) + 1, dtype=bool)
    for c in chunks:
        covered[c.start : c.end] = True
    for s, e, _ in word_spans(text):
        assert covered[s:e].all(), (text, s, e)


def test_fixed_windows_share_overlap_tokens() -> None:
    text = " ".join(f"w{i}" for i in range(20))
    chunks = _build("fixed", 8, 3)(text)
    assert [c.text.split()[0] for c in chunks] == ["w0", "w5", "w10", "w15"]
    assert chunks[0].text.split()[-3:] == chunks[1].text.split()[:3]


def test_sentences_are_never_cut_when_they_fit() -> None:
    text = "One two three. Four five six seven. Eight nine. Ten eleven twelve thirteen."
    chunks = _build("sentences", 9, 0)(text)
    # 9 tokens (periods count) fill the first chunk exactly; the last two sentences are 3 + 5 tokens.
    assert [c.text for c in chunks] == ["One two three. Four five six seven.",
                                        "Eight nine. Ten eleven twelve thirteen."]  # fmt: skip


def test_recursive_prefers_paragraph_boundaries() -> None:
    para = "alpha beta gamma delta. epsilon zeta."
    text = f"{para}\n\n{para}\n\n{para}"
    chunks = _build("recursive", 10, 0)(text)
    assert [c.text for c in chunks] == [para, para, para]


def test_markdown_heading_path_and_code_fences() -> None:
    text = "# Guide\nintro text\n## Install\n```\n# not a heading\npip install x\n```\n## Use\nrun it"
    chunks = _build("markdown", 50, 0)(text)
    contexts = {c.context for c in chunks}
    assert contexts == {"Guide", "Guide > Install", "Guide > Use"}
    code = next(c for c in chunks if "pip install" in c.text)
    assert "# not a heading" in code.text and code.context == "Guide > Install"


def test_semantic_breaks_between_topics() -> None:
    cats = "Cats purr softly. Cats chase mice. Cats nap in sun. "
    sql = "SQL databases store rows. SQL queries join tables. SQL indexes speed lookups."
    chunks = build_chunker(ChunkerSpec("semantic", 100, 0), embed=EMBED)(cats + sql)
    assert any(c.text.startswith("SQL databases") for c in chunks)
    assert all(not ("Cats" in c.text and "SQL" in c.text) for c in chunks)


def test_parent_child_children_inside_parents() -> None:
    paragraphs = [" ".join(f"p{p}w{i}" for i in range(30)) for p in range(3)]
    text = "\n\n".join(paragraphs)
    chunks = _build("parent_child", 10, 2)(text)
    parents = sorted({c.parent for c in chunks})
    assert [text[s:e] for s, e in parents] == paragraphs  # 30 tokens each fit the 40-token parents
    assert all(len(c.text.split()) <= 10 for c in chunks)
    assert len(chunks) == 3 * 4  # windows of 10 with overlap 2 over 30 tokens start at 0, 8, 16, 24


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ChunkerSpec("nope"), "unknown chunking strategy 'nope'"),
        (ChunkerSpec("fixed", 0), "chunk size must be a positive"),
        (ChunkerSpec("fixed", 8, 8), "chunk overlap must be an int in [0, 8)"),
        (ChunkerSpec("fixed", 8, 0, tokenizer="bpe"), "unknown chunk tokenizer 'bpe'"),
        (ChunkerSpec("parent_child", 64, 0, parent_tokens=32), "parent_tokens (32) must exceed"),
    ],
)
def test_bad_specs_raise_clear_errors(spec: ChunkerSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        build_chunker(spec, embed=EMBED)


def test_semantic_needs_an_embedder() -> None:
    with pytest.raises(ValueError, match="needs an embedder"):
        build_chunker(ChunkerSpec("semantic"))


def test_minilm_token_spans_cap_model_tokens() -> None:
    text = "Unbelievably, tokenization splits words into word-pieces. " * 20
    chunks = build_chunker(ChunkerSpec("fixed", 32, 0, tokenizer="minilm"))(text)
    from nanoforge.retriever.chunking import minilm_spans

    assert all(sum(n for _, _, n in minilm_spans(c.text)) <= 32 for c in chunks)
    assert len(chunks) > 1
    assert all(text[c.start : c.end] == c.text for c in chunks)
