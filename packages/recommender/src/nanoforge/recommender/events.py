"""The event schema and its readers: one user action per record, grouped into per-user time-ordered sequences.

What it does: defines ``Event`` (user, timestamp in seconds, event type, item, optional context fields) and
the accepted event types ``EVENT_TYPES`` (view -> click -> cart -> purchase funnel); reads events from CSV,
JSONL or Parquet (Parquet through pandas + pyarrow, an optional extra) via the ``READERS`` registry; and
groups them into ``sequences`` sorted by (timestamp, original order) per user.
What it does not do: map items to ids (``vocab``), split train/test (``splits``) or load MovieLens files
(``movielens``). Every bad record is a ``ValueError`` naming the file, the line and what is accepted.

Record shape (CSV header / JSON keys): ``user, timestamp, event, item`` required; any other column is kept
as a string in ``Event.context``. ``event`` defaults to ``view`` when the column is absent.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Accepted event types, in funnel order. Token id = index + 1 (0 is padding), see ``event_type_id``.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")
REQUIRED = ("user", "timestamp", "item")


@dataclass(frozen=True)
class Event:
    """One user action. ``timestamp`` is seconds (any epoch); ``context`` holds optional extra fields."""

    user: str
    timestamp: float
    event: str
    item: str
    context: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def event_type_id(name: str) -> int:
    """Token id of an event type: view=1, click=2, cart=3, purchase=4 (0 is padding).

    Raises:
        ValueError: unknown event type.
    """
    try:
        return EVENT_TYPES.index(name) + 1
    except ValueError:
        raise ValueError(f"unknown event type {name!r}; accepted: {', '.join(EVENT_TYPES)}") from None


def make_event(record: dict[str, Any], where: str) -> Event:
    """Validate one raw record (``where`` names file:line in errors) into an ``Event``."""
    missing = [k for k in REQUIRED if k not in record or record[k] in (None, "")]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; required: {', '.join(REQUIRED)}")
    try:
        ts = float(record["timestamp"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: timestamp {record['timestamp']!r} is not a number of seconds") from None
    if not math.isfinite(ts):
        raise ValueError(f"{where}: timestamp {record['timestamp']!r} must be finite")
    kind = str(record.get("event") or "view")
    if kind not in EVENT_TYPES:
        raise ValueError(f"{where}: unknown event type {kind!r}; accepted: {', '.join(EVENT_TYPES)}")
    context = {str(k): str(v) for k, v in record.items() if k not in (*REQUIRED, "event") and v is not None}
    return Event(str(record["user"]), ts, kind, str(record["item"]), context)


def read_csv(path: Path) -> list[Event]:
    """Events from a CSV file with a header row."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return [make_event(row, f"{path}:{i + 2}") for i, row in enumerate(reader)]


def jsonl_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(``file:line``, object) for each non-blank line of a JSON-lines file; bad lines are ValueErrors."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e})") from e
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{i}: a record must be a JSON object, got {type(rec).__name__}")
            out.append((f"{path}:{i}", rec))
    return out


def read_jsonl(path: Path) -> list[Event]:
    """Events from a JSON-lines file (blank lines skipped)."""
    return [make_event(rec, where) for where, rec in jsonl_records(path)]


def read_parquet(path: Path) -> list[Event]:
    """Events from a Parquet file (needs the ``parquet`` extra: pandas + pyarrow)."""
    try:
        import pandas as pd
    except ImportError as e:
        raise ValueError(
            f"{path}: reading Parquet needs pandas and pyarrow (pip install 'nanoforge-recommender[parquet]')"
        ) from e
    frame = pd.read_parquet(path)
    return [make_event(rec, f"{path}:row {i}") for i, rec in enumerate(frame.to_dict("records"))]


READERS: dict[str, Callable[[Path], list[Event]]] = {
    ".csv": read_csv,
    ".jsonl": read_jsonl,
    ".parquet": read_parquet,
}


def read_events(path: str | Path) -> list[Event]:
    """Read events from a file, choosing the reader by extension.

    Raises:
        ValueError: unknown extension or a bad record. OSError: the file cannot be read.
    """
    p = Path(path)
    reader = READERS.get(p.suffix.lower())
    if reader is None:
        raise ValueError(
            f"{p}: unsupported events file extension {p.suffix!r}; accepted: {', '.join(READERS)}"
        )
    return reader(p)


def write_jsonl(events: Iterable[Event], path: str | Path) -> None:
    """Write events as JSON lines (atomically: temp file, fsync, rename)."""
    from nanoforge.core_model.checkpoint import atomic_write_bytes

    lines = []
    for e in events:
        rec: dict[str, Any] = {"user": e.user, "timestamp": e.timestamp, "event": e.event, "item": e.item}
        rec.update(e.context)
        lines.append(json.dumps(rec))
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())


def sequences(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Group events by user, each list sorted by timestamp (ties keep input order). Users sorted by id."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_user[e.user].append(e)
    return {u: sorted(by_user[u], key=lambda e: e.timestamp) for u in sorted(by_user)}
