"""Events -> token ids: an item vocabulary with a frequency cut-off and hashed buckets, plus time-gap tokens.

What it does: ``ItemVocab`` gives every item seen at least ``min_count`` times in the TRAINING events its own
id and sends every other item (rare or never seen) to one of ``n_buckets`` hashed buckets (CRC32 of the item
string, stable across runs and machines). Id layout::

    0                      padding
    1 .. n_buckets         hashed buckets for unseen / rare items
    n_buckets + 1 ..       known items, most frequent first (ties by item string)

The training count of each known item is kept too (``counts``: the popularity fallback of the service).
``gap_bucket`` turns the seconds since the previous event into a log2 bucket. ``tokenize`` maps a user's
event list to three aligned id arrays (item, event type, gap). The vocab saves to / loads from JSON
(format ``nanoforge-rec-vocab`` v1).
What it does not do: split data (``splits``) or batch it (``dataset``).
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoforge.core_model.checkpoint import atomic_write_json
from nanoforge.recommender.events import Event, event_type_id

FORMAT = "nanoforge-rec-vocab"
VERSION = 1
PAD = 0
#: Gap ids: 0 = padding, 1 = first event of a sequence (no previous event), 2 + floor(log2(1 + seconds)).
N_GAP_BUCKETS = 34  # 2 + 32 log2 buckets: the last one holds every gap >= 2**31 s (68 years)


def gap_bucket(seconds: float) -> int:
    """Log-bucketed time gap token: ``2 + floor(log2(1 + seconds))``, clipped; negative gaps count as 0.

    Examples: 0 s -> 2, 1 s -> 3, 3 s -> 4, 60 s -> 7, 1 hour -> 13, 1 day -> 18.
    """
    s = max(0.0, float(seconds))
    return min(N_GAP_BUCKETS - 1, 2 + math.floor(math.log2(1.0 + s)))


@dataclass(frozen=True)
class ItemVocab:
    """Known items (own ids) and hashed buckets (everything else)."""

    items: tuple[str, ...]  # known items in id order (id = n_buckets + 1 + index)
    n_buckets: int = 16
    min_count: int = 1
    counts: tuple[int, ...] = ()  # training events per known item (same order); () when not recorded

    def __post_init__(self) -> None:
        if not isinstance(self.n_buckets, int) or self.n_buckets <= 0:
            raise ValueError(f"n_buckets={self.n_buckets!r} must be a positive int")
        if self.counts and len(self.counts) != len(self.items):
            raise ValueError(f"counts has {len(self.counts)} entries for {len(self.items)} items")
        object.__setattr__(self, "_index", {it: i for i, it in enumerate(self.items)})

    @classmethod
    def build(cls, events: Iterable[Event], *, min_count: int = 1, n_buckets: int = 16) -> ItemVocab:
        """Vocabulary of the items occurring at least ``min_count`` times, most frequent first."""
        if not isinstance(min_count, int) or min_count <= 0:
            raise ValueError(f"min_count={min_count!r} must be a positive int")
        counts = Counter(e.item for e in events)
        kept = sorted((it for it, n in counts.items() if n >= min_count), key=lambda it: (-counts[it], it))
        return cls(tuple(kept), n_buckets, min_count, tuple(counts[it] for it in kept))

    @property
    def first_item_id(self) -> int:
        """Id of the first known item (ids below are padding and buckets)."""
        return self.n_buckets + 1

    @property
    def size(self) -> int:
        """Number of ids (padding + buckets + known items)."""
        return self.first_item_id + len(self.items)

    def bucket(self, item: str) -> int:
        """Hashed bucket id (1..n_buckets) of an item; stable across processes (CRC32, not ``hash``)."""
        return 1 + zlib.crc32(item.encode("utf-8")) % self.n_buckets

    def id(self, item: str) -> int:
        """Id of an item: its own when known, else its hashed bucket."""
        i = self._index.get(item)  # type: ignore[attr-defined]
        return self.bucket(item) if i is None else self.first_item_id + i

    def is_known(self, item: str) -> bool:
        return item in self._index  # type: ignore[attr-defined]

    def item(self, token: int) -> str:
        """The item string of a known-item id.

        Raises:
            ValueError: ``token`` is padding or a bucket (many items share it) or out of range.
        """
        if not self.first_item_id <= token < self.size:
            raise ValueError(
                f"id {token} is not a known item; known items have ids {self.first_item_id}..{self.size - 1}"
            )
        return self.items[token - self.first_item_id]

    # ------------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "n_buckets": self.n_buckets,
            "min_count": self.min_count,
            "items": list(self.items),
            "counts": list(self.counts),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "vocab") -> ItemVocab:
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"{source}: not a {FORMAT!r} v{VERSION} file")
        counts = tuple(int(c) for c in data.get("counts", ()))  # absent in files written before counts
        return cls(tuple(data["items"]), int(data["n_buckets"]), int(data["min_count"]), counts)

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ItemVocab:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: cannot read vocab ({e})") from e
        return cls.from_dict(data, str(p))


def tokenize(events: list[Event], vocab: ItemVocab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One user's time-ordered events -> (item ids, event-type ids, gap ids), each int64 of length N.

    Example: views of "a" at t=0 and "b" at t=60 -> items [id(a), id(b)], types [1, 1], gaps [1, 7].
    """
    items = np.fromiter((vocab.id(e.item) for e in events), dtype=np.int64, count=len(events))
    types = np.fromiter((event_type_id(e.event) for e in events), dtype=np.int64, count=len(events))
    gaps = np.ones(len(events), dtype=np.int64)
    for i in range(1, len(events)):
        gaps[i] = gap_bucket(events[i].timestamp - events[i - 1].timestamp)
    return items, types, gaps
