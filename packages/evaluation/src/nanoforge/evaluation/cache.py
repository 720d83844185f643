"""A response cache in SQLite, keyed by a hash of backend + model + operation + prompt + parameters.

Re-running a task with the same settings reads every reply from here, so iterating on metrics or reports
costs nothing. Only successful replies are stored (failures are retried next run). Values are JSON text.

    cache = ResponseCache("runs/cache.sqlite")
    key = cache_key("grpc", "127.0.0.1:50051", "tiny", "generate", "Q: 2+2?", {"max_new_tokens": 8})
    cache.get(key)  # None on a miss

What it deliberately does not do: expire entries, or share one connection across threads (each call
opens its own short transaction on one connection; asyncio code calls it from one thread).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
)


def cache_key(kind: str, target: str, model: str, op: str, prompt: Any, params: Any) -> str:
    """sha256 over a canonical JSON of everything that determines the reply."""
    payload = json.dumps(
        {"kind": kind, "target": target, "model": model, "op": op, "prompt": prompt, "params": params},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    """SQLite-backed key -> JSON value store (WAL mode, so a crash never leaves a torn entry)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        """The stored value or None."""
        row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``, replacing any old value."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, julianday('now'))",
                (key, json.dumps(value, ensure_ascii=False)),
            )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        self._db.close()
