"""Training a byte-level BPE: count pre-tokens once, then learn merges incrementally.

Algorithm (what makes it fast enough in pure Python):

1. Count pieces (pre-tokens) of the corpus with the split pattern (``corpus.py``, parallel, streamed).
   Only *distinct* pieces matter from then on: a "word" is a distinct piece as a list of token ids with
   its count. Pieces of one byte can never merge and are dropped.
2. Count every adjacent pair once, weighted by word counts, and index ``pair -> set of word ids``.
3. Repeat: pop the most frequent pair from a lazy max-heap; entries whose count is stale are re-pushed
   with the current count. Merge it only inside the words that contain it (from the index); at each merge
   site only the neighbour pairs change, ``(prev, a) -> (prev, new)`` and ``(b, next) -> (new, next)``, so
   pair counts are adjusted by those deltas. Push the pairs that contain the new token (existing pairs
   only ever lose counts, so the lazy heap never under-states a count). Nothing is recounted.

Decisions:
- Ties (equal counts) go to the smallest pair ``(a, b)`` by ids: the heap orders ``(-count, a, b)``.
- A merge whose bytes equal an existing token's bytes is skipped (the pair is banned), so every id has a
  distinct byte string, as tiktoken's ranks require. Byte-level training from raw bytes has not been seen
  to produce such a candidate (random small corpora never did); if it ever happens the count is kept in
  ``metadata["skipped_duplicate_merges"]`` and the tokenizer stays on the Python encoder, because tiktoken
  would merge that pair by its bytes while our merge table does not.
- Training stops early when the best pair occurs fewer than ``min_frequency`` times.

Not here: text normalisation (none is done), special-token handling beyond appending them.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from nanoforge.tokenizer.core import Tokenizer, check_special_tokens
from nanoforge.tokenizer.corpus import CountResult, collect_files, count_files, count_texts
from nanoforge.tokenizer.patterns import PATTERNS, resolve_pattern

Pair = tuple[int, int]


def learn_merges(
    words: list[list[int]],
    counts: Sequence[int],
    num_merges: int,
    *,
    min_frequency: int = 2,
    on_merge: Callable[[int], None] | None = None,
    base_vocab: Sequence[bytes] | None = None,
) -> tuple[list[Pair], dict[str, int]]:
    """Learn up to ``num_merges`` merges from distinct words (lists of byte ids) and their counts.

    ``words`` is modified in place (each word ends as its final segmentation). New ids start at
    ``len(base_vocab)`` (256: the bytes, unless another base alphabet is given).

    Example: ``words=[[97, 98, 99], [97, 98]], counts=[2, 1], num_merges=1 -> [(97, 98)]``
    (``ab`` occurs 3 times, ``bc`` twice).

    Returns:
        ``(merges, stats)`` where stats counts skipped duplicate merges and heap pops.
    """
    vocab: list[bytes] = list(base_vocab) if base_vocab is not None else [bytes([i]) for i in range(256)]
    known = set(vocab)
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for wid, word in enumerate(words):
        c = counts[wid]
        for pair in itertools.pairwise(word):
            pair_counts[pair] += c
            where[pair].add(wid)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    stats = {"skipped_duplicates": 0, "heap_pops": 0}
    heappush, heappop = heapq.heappush, heapq.heappop

    while len(merges) < num_merges and heap:
        neg, pair = heappop(heap)
        stats["heap_pops"] += 1
        current = pair_counts.get(pair, 0)
        if current != -neg:  # stale entry: counts only ever go down for an existing pair
            if current > 0:
                heappush(heap, (-current, pair))
            continue
        if current < min_frequency:
            break
        a, b = pair
        new_bytes = vocab[a] + vocab[b]
        if new_bytes in known:
            stats["skipped_duplicates"] += 1
            pair_counts.pop(pair)
            where.pop(pair, None)
            continue
        new_id = len(vocab)
        merges.append(pair)
        vocab.append(new_bytes)
        known.add(new_bytes)
        touched: set[Pair] = set()
        for wid in where.pop(pair):
            word = words[wid]
            n = len(word)
            c = counts[wid]
            merged: list[int] = []
            i = 0
            # Merge left to right, non-overlapping; around each merge site the neighbour pairs change:
            # (prev, a) -> (prev, new) and (b, next) -> (new, next). Nothing else in the word does.
            while True:
                try:
                    j = word.index(a, i)  # C speed scan to the next candidate
                except ValueError:
                    merged.extend(word[i:])
                    break
                if j + 1 < n and word[j + 1] == b:
                    merged.extend(word[i:j])
                    if merged:
                        prev = merged[-1]
                        pair_counts[(prev, a)] -= c
                        p = (prev, new_id)
                        pair_counts[p] += c
                        touched.add(p)
                        where[p].add(wid)
                    if j + 2 < n:
                        nxt = word[j + 2]
                        pair_counts[(b, nxt)] -= c
                        p = (new_id, nxt)
                        pair_counts[p] += c
                        touched.add(p)
                        where[p].add(wid)
                    merged.append(new_id)
                    i = j + 2
                else:
                    merged.extend(word[i : j + 1])
                    i = j + 1
            if len(merged) != n:  # the index can hold words that lost the pair earlier: unchanged
                words[wid] = merged
        pair_counts.pop(pair, None)
        for p in touched:
            if pair_counts[p] > 0:
                heappush(heap, (-pair_counts[p], p))
        if on_merge:
            on_merge(len(merges))
    return merges, stats


def words_from_counts(piece_counts: dict[str, int]) -> tuple[list[list[int]], list[int]]:
    """Distinct pieces -> (byte-id lists, counts), dropping one-byte pieces (they have no pair)."""
    words, counts = [], []
    for piece, c in piece_counts.items():
        data = piece.encode("utf-8")
        if len(data) >= 2:
            words.append(list(data))
            counts.append(c)
    return words, counts


def train_bpe(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    vocab_size: int = 8192,
    pattern: str = "gpt4",
    special_tokens: Sequence[str] = ("<|endoftext|>",),
    min_frequency: int = 2,
    num_workers: int | None = None,
    show_progress: bool = True,
    *,
    texts: Iterable[str] | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on files or in-memory texts.

    Args:
        inputs: file(s), directory(ies) (recursive, text files only) or glob(s).
        vocab_size: total ids including the 256 byte tokens and the special tokens.
        pattern: a name in ``PATTERNS`` (``"gpt2"``, ``"gpt4"``) or a custom split regex.
        special_tokens: strings appended after the merges, in order.
        min_frequency: stop early when the best pair occurs fewer times than this.
        num_workers: processes for counting (default ``os.cpu_count()``).
        show_progress: rich progress bars on stderr (only drawn on a terminal).
        texts: an iterable of strings to train on instead of ``inputs``.

    Returns:
        The trained ``Tokenizer``; its ``metadata`` records the corpus size and timings.

    Raises:
        ValueError: bad vocab size, pattern, special tokens or inputs (missing, empty, binary files).
    """
    if (inputs is None) == (texts is None):
        raise ValueError("pass exactly one of `inputs` (files, directories, globs) or `texts` (strings)")
    specials = list(check_special_tokens(special_tokens, 0))
    minimum = 256 + len(specials)
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be an int >= {minimum} (256 byte tokens + {len(specials)} special tokens), "
            f"got {vocab_size!r}"
        )
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    source = resolve_pattern(pattern)
    workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"num_workers must be a positive int or None, got {num_workers!r}")

    from nanoforge.cli import progress

    t0 = time.perf_counter()
    skipped_files = 0
    with progress(disable=None if show_progress else True, transient=True) as bar:
        if texts is not None:
            task = bar.add_task("counting", total=None, info="")
            counted = count_texts(texts, source, on_progress=lambda n: bar.advance(task, n))
        else:
            files, skipped_files = collect_files(inputs)  # type: ignore[arg-type]
            total = sum(f.stat().st_size for f in files)
            task = bar.add_task("counting", total=total, info=f"{len(files)} files")
            counted = count_files(
                files, source, num_workers=workers, on_progress=lambda n: bar.advance(task, n)
            )
        if counted.n_bytes == 0:
            raise ValueError("the training corpus is empty (0 bytes of text)")
        t1 = time.perf_counter()
        words, counts = words_from_counts(counted.counts)
        num_merges = vocab_size - minimum
        task = bar.add_task("merging", total=num_merges, info=f"{len(words)} distinct pieces")
        merges, stats = learn_merges(
            words,
            counts,
            num_merges,
            min_frequency=min_frequency,
            on_merge=lambda k: bar.update(task, completed=k) if k % 128 == 0 else None,
        )
        bar.update(task, completed=len(merges))
    t2 = time.perf_counter()
    metadata: dict[str, Any] = _metadata(
        counted, skipped_files, len(words), stats, t1 - t0, t2 - t1, vocab_size
    )
    metadata["pattern_name"] = pattern if pattern in PATTERNS else "custom"
    metadata["min_frequency"] = min_frequency
    return Tokenizer(merges, pattern=source, special_tokens=specials, metadata=metadata)


def _metadata(
    counted: CountResult,
    skipped: int,
    n_words: int,
    stats: dict[str, int],
    t_count: float,
    t_merge: float,
    requested: int,
) -> dict[str, Any]:
    return {
        "trainer": "nanoforge.tokenizer.train_bpe",
        "corpus_bytes": counted.n_bytes,
        "corpus_files": counted.n_files,
        "skipped_files": skipped,
        "distinct_pieces": n_words,
        "requested_vocab_size": requested,
        "skipped_duplicate_merges": stats["skipped_duplicates"],
        "count_seconds": round(t_count, 3),
        "merge_seconds": round(t_merge, 3),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
