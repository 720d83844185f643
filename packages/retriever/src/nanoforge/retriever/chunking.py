"""Chunking strategies: cut a document into pieces of at most N tokens, keeping exact char offsets.

Strategies (the ``CHUNKERS`` registry of builder functions):

- ``fixed``: windows of ``max_tokens`` tokens, consecutive windows sharing ``overlap`` tokens.
- ``sentences``: whole sentences packed up to the size; a sentence that alone is too long is windowed.
- ``recursive``: split on blank lines, then lines, then sentences, then spaces, then token windows, until
  every piece fits; then pack neighbours back together up to the size.
- ``markdown``: sections at Markdown headings, never splitting inside a fenced code block; each chunk carries
  its heading path (``"Install > From source"``) as ``context``, which is embedded with it but is not part of
  its text (so the offsets stay exact).
- ``semantic``: sentences grouped where the embedding distance between neighbours jumps (above the given
  percentile of all neighbour distances), each group still packed to at most ``max_tokens``.
- ``parent_child``: ``recursive`` parents of ``parent_tokens`` tokens, each cut into ``fixed`` children of
  ``max_tokens``; the index searches the children and returns the parent (``Chunk.parent``).

Tokens come from a ``Spanner`` (text -> sorted, non-overlapping (start, end, n_tokens) units that no chunk
boundary splits): ``words`` (a regex, one token per word or punctuation mark, no dependencies) or ``minilm``
(the WordPiece tokenizer of all-MiniLM-L6-v2, whose 256-token input limit is what chunk sizes are about;
a unit is a whole word with its ``##`` pieces). The invariant, property-tested: ``text[c.start:c.end] == c.text`` and
every chunk has at most ``max_tokens`` tokens.

What it deliberately does not do: language-specific sentence models (the splitter is a regex), or
rewrite any text (no normalization; offsets must stay exact).
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

Span = tuple[int, int]
#: Text -> sorted, non-overlapping (start, end, n_tokens) units; a unit is never split by a chunk boundary.
Spanner = Callable[[str], list[tuple[int, int, int]]]
#: Embeds a batch of texts into unit vectors, shape (N, D); used by the semantic chunker.
EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Chunk:
    """A piece of a document.

    Attributes:
        text: exactly ``doc_text[start:end]``.
        start: offset of the first character in the document (code points).
        end: offset one past the last character.
        context: text embedded in front of the chunk but not part of it (a heading path); may be empty.
        parent: (start, end) of the larger passage returned instead of this chunk (parent-child); or None.
    """

    text: str
    start: int
    end: int
    context: str = ""
    parent: Span | None = None


# --- token spanners ------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def word_spans(text: str) -> list[tuple[int, int, int]]:
    """Words and single punctuation marks, one token each: ``"Hi, you"`` -> ``[(0, 2, 1), (2, 3, 1), (4, 7, 1)]``."""
    return [(*m.span(), 1) for m in _WORD_RE.finditer(text)]


@functools.cache
def _minilm_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer

    from nanoforge.retriever.embedders import minilm_model_dir

    tok = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def minilm_spans(text: str) -> list[tuple[int, int, int]]:
    """Words of all-MiniLM-L6-v2's WordPiece tokenizer, weighted by their sub-word count.

    Sub-words (``##`` pieces) stay with their word: cutting inside a word would make the chunk tokenize
    differently on its own. A single word longer than the chunk size is the one case that can exceed it.
    """
    enc = _minilm_tokenizer().encode(text, add_special_tokens=False)
    units: list[tuple[int, int, int]] = []
    for (s, e), piece in zip(enc.offsets, enc.tokens, strict=True):
        if e <= s:
            continue
        if units and piece.startswith("##") and s == units[-1][1]:
            ps, _, n = units[-1]
            units[-1] = (ps, e, n + 1)
        elif not units or s >= units[-1][1]:
            units.append((s, e, 1))
    return units


#: Token spanner name -> function.
SPANNERS: dict[str, Spanner] = {"words": word_spans, "minilm": minilm_spans}


class _Tokens:
    """Token units of one text with O(log n) counting of the tokens inside a char range."""

    def __init__(self, text: str, spanner: Spanner) -> None:
        self.text = text
        units = spanner(text)
        self.starts = [s for s, _, _ in units]
        self.ends = [e for _, e, _ in units]
        self.cum = [0]  # cum[i] = tokens in units[:i]
        for _, _, n in units:
            self.cum.append(self.cum[-1] + n)

    def _range(self, start: int, end: int) -> tuple[int, int]:
        return bisect.bisect_left(self.starts, start), bisect.bisect_right(self.ends, end)

    def count(self, start: int, end: int) -> int:
        """Tokens of the units that lie inside ``[start, end)``."""
        lo, hi = self._range(start, end)
        return self.cum[hi] - self.cum[lo] if hi > lo else 0

    def windows(self, start: int, end: int, size: int, overlap: int) -> list[Span]:
        """Char ranges of consecutive windows of at most ``size`` tokens over ``[start, end)``, each sharing
        up to ``overlap`` tokens with the previous one."""
        lo, hi = self._range(start, end)
        cum = self.cum
        out: list[Span] = []
        i = lo
        while i < hi:
            j = i + 1  # a window always takes at least one unit
            while j < hi and cum[j + 1] - cum[i] <= size:
                j += 1
            out.append((self.starts[i], self.ends[j - 1]))
            if j == hi:
                break
            nxt = j
            while nxt - 1 > i and cum[j] - cum[nxt - 1] <= overlap:
                nxt -= 1
            i = nxt
        return out


# --- helpers -------------------------------------------------------------------------------------------


def _strip(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _split_on(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[Span]:
    """Tile ``[start, end)`` into pieces that end just after each match of ``pattern``."""
    pieces, cur = [], start
    for m in pattern.finditer(text, start, end):
        if m.end() > cur and m.end() < end:
            pieces.append((cur, m.end()))
            cur = m.end()
    pieces.append((cur, end))
    return [p for p in pieces if p[1] > p[0]]


_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_LINE = re.compile(r"\n")
_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n[ \t]*\n")
_SPACE = re.compile(r"\s+")
_SEPARATORS = (_PARAGRAPH, _LINE, _SENTENCE, _SPACE)


def _fit(tok: _Tokens, start: int, end: int, max_tokens: int, level: int = 0) -> list[Span]:
    """Recursively split ``[start, end)`` on coarser-to-finer separators until each piece fits."""
    if tok.count(start, end) <= max_tokens:
        return [(start, end)]
    if level >= len(_SEPARATORS):
        return tok.windows(start, end, max_tokens, 0)
    out: list[Span] = []
    pieces = _split_on(tok.text, start, end, _SEPARATORS[level])
    if len(pieces) == 1:
        return _fit(tok, start, end, max_tokens, level + 1)
    for s, e in pieces:
        out.extend(_fit(tok, s, e, max_tokens, level + 1))
    return out


def _pack(
    tok: _Tokens, pieces: Sequence[Span], max_tokens: int, overlap: int, context: str = ""
) -> list[Chunk]:
    """Merge consecutive fitting pieces into chunks of at most ``max_tokens``; repeat trailing pieces of up
    to ``overlap`` tokens at the start of the next chunk."""
    chunks: list[Chunk] = []
    group: list[Span] = []

    def emit() -> None:
        s, e = _strip(tok.text, group[0][0], group[-1][1])
        if e > s and tok.count(s, e) > 0:
            chunks.append(Chunk(tok.text[s:e], s, e, context))

    for piece in pieces:
        if group and tok.count(group[0][0], piece[1]) > max_tokens:
            emit()
            carried: list[Span] = []
            for prev in reversed(group):
                if tok.count(prev[0], group[-1][1]) > overlap or tok.count(prev[0], piece[1]) > max_tokens:
                    break
                carried.insert(0, prev)
            group = carried
        group.append(piece)
    if group:
        emit()
    return chunks


def _check(max_tokens: int, overlap: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"chunk size must be a positive number of tokens, got {max_tokens!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < max_tokens:
        raise ValueError(f"chunk overlap must be an int in [0, {max_tokens}) tokens, got {overlap!r}")


# --- strategies ----------------------------------------------------------------------------------------


def chunk_fixed(tok: _Tokens, max_tokens: int, overlap: int) -> list[Chunk]:
    """Fixed token windows over the whole text."""
    return [Chunk(tok.text[s:e], s, e) for s, e in tok.windows(0, len(tok.text), max_tokens, overlap)]


def chunk_sentences(tok: _Tokens, max_tokens: int, overlap: int) -> list[Chunk]:
    """Sentences packed up to the size (over-long sentences are cut into token windows first)."""
    pieces: list[Span] = []
    for s, e in _split_on(tok.text, 0, len(tok.text), _SENTENCE):
        pieces.extend([(s, e)] if tok.count(s, e) <= max_tokens else tok.windows(s, e, max_tokens, 0))
    return _pack(tok, pieces, max_tokens, overlap)


def chunk_recursive(tok: _Tokens, max_tokens: int, overlap: int) -> list[Chunk]:
    """Paragraphs -> lines -> sentences -> words -> token windows, then packed up to the size."""
    return _pack(tok, _fit(tok, 0, len(tok.text), max_tokens), max_tokens, overlap)


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)


def _fenced_ranges(text: str) -> list[Span]:
    marks = [m.start() for m in _FENCE.finditer(text)]
    return [(marks[i], marks[i + 1]) for i in range(0, len(marks) - 1, 2)]


def chunk_markdown(tok: _Tokens, max_tokens: int, overlap: int) -> list[Chunk]:
    """Sections at Markdown headings (not inside code fences); each chunk's context is its heading path."""
    text = tok.text
    fences = _fenced_ranges(text)
    heads = [m for m in _HEADING.finditer(text) if not any(s < m.start() < e for s, e in fences)]
    bounds = [0] + [m.start() for m in heads] + [len(text)]
    path: list[tuple[int, str]] = []
    chunks: list[Chunk] = []
    for i in range(len(bounds) - 1):
        s, e = bounds[i], bounds[i + 1]
        if i > 0:
            m = heads[i - 1]
            level = len(m.group(1))
            path = [(lv, t) for lv, t in path if lv < level] + [(level, m.group(2).strip())]
        context = " > ".join(t for _, t in path)
        # Inside a section, code fences are kept whole when they fit: split around them first.
        pieces: list[Span] = []
        cur = s
        for fs, fe in fences:
            if s <= fs < e:
                fe_line = text.find("\n", fe)
                fe_line = e if fe_line == -1 or fe_line > e else fe_line + 1
                pieces.extend(_fit(tok, cur, fs, max_tokens) if fs > cur else [])
                pieces.extend(_fit(tok, fs, fe_line, max_tokens))
                cur = fe_line
        if cur < e:
            pieces.extend(_fit(tok, cur, e, max_tokens))
        chunks.extend(_pack(tok, pieces, max_tokens, overlap, context))
    return chunks


def chunk_semantic(
    tok: _Tokens, max_tokens: int, overlap: int, embed: EmbedFn, percentile: float = 80.0
) -> list[Chunk]:
    """Sentence groups cut where neighbour embedding distance exceeds the ``percentile`` of distances."""
    sentences: list[Span] = []
    for s, e in _split_on(tok.text, 0, len(tok.text), _SENTENCE):
        if tok.count(s, e) > 0:
            sentences.extend([(s, e)] if tok.count(s, e) <= max_tokens else tok.windows(s, e, max_tokens, 0))
    if len(sentences) <= 1:
        return _pack(tok, sentences, max_tokens, overlap)
    vecs = np.asarray(embed([tok.text[s:e] for s, e in sentences]), dtype=np.float32)  # (S, D)
    dist = 1.0 - np.sum(vecs[:-1] * vecs[1:], axis=1)  # (S-1,) cosine distance of neighbours
    threshold = float(np.percentile(dist, percentile))
    chunks: list[Chunk] = []
    group = [sentences[0]]
    for piece, d in zip(sentences[1:], dist, strict=True):
        if d > threshold:
            chunks.extend(_pack(tok, group, max_tokens, overlap))
            group = []
        group.append(piece)
    chunks.extend(_pack(tok, group, max_tokens, overlap))
    return chunks


def chunk_parent_child(tok: _Tokens, max_tokens: int, overlap: int, parent_tokens: int) -> list[Chunk]:
    """Small ``fixed`` children inside ``recursive`` parents; each child records its parent's span."""
    out: list[Chunk] = []
    for parent in chunk_recursive(tok, parent_tokens, 0):
        for s, e in tok.windows(parent.start, parent.end, max_tokens, overlap):
            out.append(Chunk(tok.text[s:e], s, e, parent=(parent.start, parent.end)))
    return out


@dataclass(frozen=True)
class ChunkerSpec:
    """What a collection records about its chunking (goes into the manifest).

    Attributes:
        strategy: a key of ``CHUNKERS``.
        max_tokens: largest chunk, in tokens of ``tokenizer``.
        overlap: tokens shared by consecutive chunks, < max_tokens.
        tokenizer: a key of ``SPANNERS``.
        parent_tokens: parent size for ``parent_child``.
    """

    strategy: str = "recursive"
    max_tokens: int = 256
    overlap: int = 0
    tokenizer: str = "words"
    parent_tokens: int = 1024


Chunker = Callable[[str], list[Chunk]]


def _builder(fn: Callable[..., list[Chunk]]) -> Callable[[ChunkerSpec, EmbedFn | None], Chunker]:
    def build(spec: ChunkerSpec, embed: EmbedFn | None) -> Chunker:
        return lambda text: fn(_Tokens(text, SPANNERS[spec.tokenizer]), spec.max_tokens, spec.overlap)

    return build


def _build_semantic(spec: ChunkerSpec, embed: EmbedFn | None) -> Chunker:
    if embed is None:
        raise ValueError("the 'semantic' chunker needs an embedder to find topic breakpoints")
    return lambda text: chunk_semantic(
        _Tokens(text, SPANNERS[spec.tokenizer]), spec.max_tokens, spec.overlap, embed
    )


def _build_parent_child(spec: ChunkerSpec, embed: EmbedFn | None) -> Chunker:
    if spec.parent_tokens <= spec.max_tokens:
        raise ValueError(
            f"parent_tokens ({spec.parent_tokens}) must exceed the child size ({spec.max_tokens})"
        )
    return lambda text: chunk_parent_child(
        _Tokens(text, SPANNERS[spec.tokenizer]), spec.max_tokens, spec.overlap, spec.parent_tokens
    )


#: Strategy name -> builder(spec, embed) -> chunker(text) -> chunks.
CHUNKERS: dict[str, Callable[[ChunkerSpec, EmbedFn | None], Chunker]] = {
    "fixed": _builder(chunk_fixed),
    "sentences": _builder(chunk_sentences),
    "recursive": _builder(chunk_recursive),
    "markdown": _builder(chunk_markdown),
    "semantic": _build_semantic,
    "parent_child": _build_parent_child,
}


def build_chunker(spec: ChunkerSpec, embed: EmbedFn | None = None) -> Chunker:
    """The chunking function described by ``spec``.

    Raises:
        ValueError: for an unknown strategy or tokenizer, or bad sizes.
    """
    if spec.strategy not in CHUNKERS:
        raise ValueError(f"unknown chunking strategy {spec.strategy!r}; known: {', '.join(CHUNKERS)}")
    if spec.tokenizer not in SPANNERS:
        raise ValueError(f"unknown chunk tokenizer {spec.tokenizer!r}; known: {', '.join(SPANNERS)}")
    _check(spec.max_tokens, spec.overlap)
    return CHUNKERS[spec.strategy](spec, embed)
