"""BPE training: the incremental algorithm against a naive one, determinism, inputs, chunking, errors."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoforge.tokenizer import GPT2_PATTERN, GPT4_PATTERN, train_bpe
from nanoforge.tokenizer.corpus import count_files, plan_chunks
from nanoforge.tokenizer.patterns import compile_pattern
from nanoforge.tokenizer.train import learn_merges, words_from_counts

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "it",
    "be",
    "at",
    "this",
    "from",
    "or",
    "are",
    "an",
]
EXTRA = ["café", "naïve", "東京", "你好", "🎉", "Привет", "def", "return", "self", "x1", "42", "3.14"]


def synthetic_text(n_lines: int = 400, seed: int = 0) -> str:
    """A deterministic multilingual text with code, digits and odd whitespace (~20 KB for 400 lines)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [
            rng.choice(WORDS) if rng.random() < 0.8 else rng.choice(EXTRA) for _ in range(rng.randint(3, 12))
        ]
        sep = rng.choice([" ", " ", " ", "  ", "\t"])
        end = rng.choice(["\n", "\n", ".\n", "\r\n", "  \n", "\n\n", ":\n    "])
        lines.append(sep.join(words) + end)
    return "".join(lines)


def naive_merges(piece_counts: Counter[str], num_merges: int) -> list[tuple[int, int]]:
    """The textbook algorithm: recount every pair before each merge (slow, obviously correct)."""
    words, counts = words_from_counts(piece_counts)
    merges = []
    for step in range(num_merges):
        pairs: Counter[tuple[int, int]] = Counter()
        for w, c in zip(words, counts):
            for p in itertools.pairwise(w):
                pairs[p] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, then smallest pair
        if pairs[best] < 2:
            break
        new_id = 256 + step
        merges.append(best)
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


def test_learn_merges_worked_example() -> None:
    # "ab" occurs 2 + 1 = 3 times, "bc" twice: ab first, then (ab, c) which is now the only pair left.
    merges, stats = learn_merges([[97, 98, 99], [97, 98]], [2, 1], 5, min_frequency=1)
    assert merges == [(97, 98), (256, 99)]
    assert stats["skipped_duplicates"] == 0


def test_ties_go_to_the_smallest_pair() -> None:
    merges, _ = learn_merges([[100, 101], [97, 98], [120, 121]], [3, 3, 3], 2, min_frequency=1)
    assert merges == [(97, 98), (100, 101)]


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_incremental_equals_naive_recount(pattern: str) -> None:
    counts = Counter(compile_pattern(pattern).findall(synthetic_text(300)))
    words, wc = words_from_counts(counts)
    fast, _ = learn_merges(words, wc, 300, min_frequency=2)
    assert fast == naive_merges(counts, 300)
    assert len(fast) > 100  # the corpus is rich enough that this compares real work


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abcab ", min_size=1, max_size=12), min_size=1, max_size=30))
def test_incremental_equals_naive_on_random_words(pieces: list[str]) -> None:
    counts = Counter(pieces)
    words, wc = words_from_counts(counts)
    fast, _ = learn_merges(words, wc, 40, min_frequency=2)
    assert fast == naive_merges(counts, 40)


def test_duplicate_byte_strings_are_skipped() -> None:
    # Base alphabet where "a" + "b" would recreate the existing symbol "ab" (id 2): that merge is banned.
    merges, stats = learn_merges(
        [[0, 1, 3], [0, 1]], [5, 5], 3, min_frequency=1, base_vocab=[b"a", b"b", b"ab", b"c"]
    )
    assert stats["skipped_duplicates"] == 1
    assert (0, 1) not in merges
    assert merges == [(1, 3), (0, 4)]  # then "bc" (new) and "a" + "bc" = "abc" (new)


def test_train_texts_vocab_specials_and_metadata() -> None:
    tok = train_bpe(
        texts=[synthetic_text()],
        vocab_size=400,
        special_tokens=("<|endoftext|>", "<|pad|>"),
        show_progress=False,
    )
    assert tok.vocab_size == 400
    assert len(tok.merges) == 400 - 256 - 2
    assert tok.special_tokens == {"<|endoftext|>": 398, "<|pad|>": 399}
    assert tok.pattern == GPT4_PATTERN
    assert tok.metadata["corpus_bytes"] == len(synthetic_text().encode())
    assert tok.metadata["skipped_duplicate_merges"] == 0
    assert tok.metadata["pattern_name"] == "gpt4" and tok.metadata["min_frequency"] == 2
    text = synthetic_text(50, seed=3)
    assert len(tok.encode(text)) < len(text.encode()) / 2  # the merges compress


def test_training_is_deterministic() -> None:
    a = train_bpe(texts=[synthetic_text()], vocab_size=500, show_progress=False)
    b = train_bpe(texts=[synthetic_text()], vocab_size=500, show_progress=False)
    assert a.merges == b.merges


def test_min_frequency_stops_early() -> None:
    tok = train_bpe(
        texts=["abcdefgh"], vocab_size=1000, special_tokens=(), min_frequency=2, show_progress=False
    )
    assert tok.merges == []  # every pair occurs once
    tok = train_bpe(
        texts=["abcdefgh"], vocab_size=1000, special_tokens=(), min_frequency=1, show_progress=False
    )
    assert len(tok.merges) == 7  # "abcdefgh" merged into one token
    assert tok.encode("abcdefgh") == [tok.vocab_size - 1]


def _write_tree(root: Path) -> list[Path]:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    files = [root / "a.txt", root / "sub" / "b.md", root / "sub" / "deeper" / "c.py"]
    for i, f in enumerate(files):
        f.write_bytes(synthetic_text(150, seed=i).encode("utf-8"))
    (root / ".hidden" / "skip.txt").write_text("hidden hidden hidden", encoding="utf-8")
    (root / "sub" / "image.bin").write_bytes(b"\x89PNG\x00\x00\x01" * 100)
    (root / "sub" / "empty.txt").write_text("", encoding="utf-8")
    return files


def test_directory_glob_and_list_inputs_match_texts(tmp_path: Path) -> None:
    files = _write_tree(tmp_path)
    expected = train_bpe(
        texts=[f.read_bytes().decode("utf-8") for f in files], vocab_size=600, show_progress=False
    )
    from_dir = train_bpe(tmp_path, vocab_size=600, show_progress=False, num_workers=1)
    assert from_dir.merges == expected.merges
    assert from_dir.metadata["corpus_files"] == 3 and from_dir.metadata["skipped_files"] == 2
    from_glob = train_bpe([str(tmp_path / "**" / "*.*")], vocab_size=600, show_progress=False, num_workers=1)
    assert from_glob.merges == expected.merges
    from_list = train_bpe([str(f) for f in files], vocab_size=600, show_progress=False, num_workers=2)
    assert from_list.merges == expected.merges


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_chunked_parallel_counting_equals_whole_file(tmp_path: Path, pattern: str) -> None:
    text = synthetic_text(600, seed=7) + "end of file without newline"
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8", newline="")
    chunks = plan_chunks(path, chunk_bytes=2000)
    assert len(chunks) > 5
    assert chunks[0].start == 0 and chunks[-1].end == path.stat().st_size
    assert all(x.end == y.start for x, y in itertools.pairwise(chunks))
    whole = Counter(compile_pattern(pattern).findall(text))
    assert count_files([path], pattern, chunk_bytes=2000, num_workers=1).counts == whole
    assert count_files([path], pattern, chunk_bytes=2000, num_workers=2).counts == whole


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"hello\x00world")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café crème brûlée ".encode("latin-1") * 50)
    nodir = tmp_path / "no_text"
    nodir.mkdir()
    (nodir / "x.bin").write_bytes(b"\x00\x01")
    cases = {
        str(tmp_path / "missing.txt"): "does not exist",
        str(empty): "is empty",
        str(nul): "NUL bytes",
        str(latin): "not valid UTF-8",
        str(tmp_path / "*.nothing"): "no non-empty UTF-8 text file",
        str(nodir): "no non-empty UTF-8 text file",
    }
    for spec, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            train_bpe(spec, vocab_size=300, show_progress=False)
        assert Path(spec).name in str(info.value)


def test_bad_parameters_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r">= 258 \(256 byte tokens \+ 2 special tokens\)"):
        train_bpe(texts=["x"], vocab_size=257, special_tokens=("<a>", "<b>"))
    with pytest.raises(ValueError, match=r"invalid split pattern '\(unclosed'"):
        train_bpe(texts=["x"], vocab_size=300, pattern="(unclosed")
    with pytest.raises(ValueError, match="exactly one of"):
        train_bpe(vocab_size=300)
    with pytest.raises(ValueError, match="duplicate special token"):
        train_bpe(texts=["x"], vocab_size=300, special_tokens=("<a>", "<a>"))
    with pytest.raises(ValueError, match="corpus is empty"):
        train_bpe(texts=[""], vocab_size=300, show_progress=False)
    with pytest.raises(ValueError, match="min_frequency"):
        train_bpe(texts=["x"], vocab_size=300, min_frequency=0)


def test_custom_pattern_is_used() -> None:
    # Split on single characters: no merge can ever happen.
    tok = train_bpe(
        texts=["aaaa bbbb"] * 10, vocab_size=300, pattern=r".", special_tokens=(), show_progress=False
    )
    assert tok.merges == []
    assert tok.pattern == "."


def test_plan_chunks_without_a_safe_newline_keeps_one_block(tmp_path: Path) -> None:
    path = tmp_path / "one_line.txt"
    path.write_bytes(b"word " * 3000 + b"\n \n" * 100)  # no newline between two printable characters
    assert [(c.start, c.end) for c in plan_chunks(path, chunk_bytes=1000)] == [(0, path.stat().st_size)]
    path.write_bytes(b"x" * 5000 + b"\ny" * 2)  # the only safe cut is at byte 5001
    assert [(c.start, c.end) for c in plan_chunks(path, chunk_bytes=1000)] == [(0, 5001), (5001, 5004)]


def test_compression_matches_hf_tokenizers_bytelevel_bpe() -> None:
    """Same corpus, same vocab size, same (GPT-2) split: HF's trainer and ours compress alike."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    train_docs = [synthetic_text(200, seed=s) for s in range(5)]
    held_out = synthetic_text(200, seed=99)
    ours = train_bpe(texts=train_docs, vocab_size=360, pattern="gpt2", show_progress=False)
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(train_docs, trainer)
    assert hf.get_vocab_size() == ours.vocab_size == 360
    n_ours = len(ours.encode(held_out))
    n_hf = len(hf.encode(held_out, add_special_tokens=False).ids)
    assert n_ours < len(held_out.encode()) / 2  # real compression, not bytes
    assert abs(n_ours - n_hf) / n_hf < 0.01, (n_ours, n_hf)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from([*"ab1. \n\r\t'é東🎉", "\u00a0", "'s", "\n\n", "  \n"]), max_size=200))
def test_property_block_cutting_never_changes_counts(parts: list[str]) -> None:
    import tempfile

    text = "".join(parts)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.txt"
        path.write_bytes(text.encode("utf-8"))
        if not text:
            return
        for pattern in (GPT2_PATTERN, GPT4_PATTERN):
            whole = Counter(compile_pattern(pattern).findall(text))
            assert count_files([path], pattern, chunk_bytes=16, num_workers=1).counts == whole
