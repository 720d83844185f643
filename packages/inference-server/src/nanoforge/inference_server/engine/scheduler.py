"""Admission: the bounded request queue, cancellations and the order in which requests get a row.

Callers on any thread ``submit`` sequences and ``cancel`` request ids; both only append under one lock and
wake the engine thread. The engine thread ``collect``s them at the top of every iteration, so all state of
running requests is touched by that one thread. Policy: first come, first served; a request is admitted
(starts prefill) when a decode row is free for it — the KV budget is the row count, see ``kv``. A full
queue answers ``QueueFull`` at once instead of growing; after ``close`` (draining shutdown) new requests get
``Unavailable``.
What it does not do: run the model (``engine``) or decide how big a prefill chunk is.
"""

from __future__ import annotations

import threading
from collections import deque

from nanoforge.inference_server.engine.request import Sequence
from nanoforge.inference_server.errors import InvalidRequest, QueueFull, Unavailable


class Scheduler:
    """Thread-safe inbox plus the engine-thread-only waiting queue."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue={max_queue} must be >= 1")
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._inbox: list[Sequence] = []
        self._cancels: set[str] = set()
        self._inflight: set[str] = set()
        self._queued = 0  # submitted and not yet admitted (inbox + waiting)
        self.accepting = True
        self.waiting: deque[Sequence] = deque()  # engine thread only

    # ------------------------------------------------------------------------------- any thread
    def submit(self, seq: Sequence) -> None:
        """Queue a request.

        Raises:
            Unavailable: the engine is shutting down.
            QueueFull: ``max_queue`` requests are already waiting.
            InvalidRequest: a request with the same id is in flight.
        """
        with self._cond:
            if not self.accepting:
                raise Unavailable("the server is shutting down and accepts no new requests")
            if seq.request_id in self._inflight:
                raise InvalidRequest(
                    f"request_id {seq.request_id!r} is already in flight; ids must be unique"
                )
            if self._queued >= self.max_queue:
                raise QueueFull(
                    f"request queue is full ({self._queued} waiting, max_queue={self.max_queue}); retry later"
                )
            self._inflight.add(seq.request_id)
            self._queued += 1
            self._inbox.append(seq)
            self._cond.notify()

    def cancel(self, request_id: str) -> None:
        """Ask the engine to drop a request (no-op for an unknown or finished id)."""
        with self._cond:
            if request_id in self._inflight:
                self._cancels.add(request_id)
                self._cond.notify()

    def close(self) -> None:
        """Stop accepting requests (those in flight continue)."""
        with self._cond:
            self.accepting = False
            self._cond.notify()

    def wake(self) -> None:
        """Wake the engine thread (e.g. a job was queued)."""
        with self._cond:
            self._cond.notify()

    def wait(self, timeout: float) -> None:
        """Block the engine thread until something arrives or ``timeout`` seconds pass."""
        with self._cond:
            if not self._inbox and not self._cancels:
                self._cond.wait(timeout)

    @property
    def queued(self) -> int:
        """Requests submitted and not yet admitted."""
        return self._queued

    @property
    def inflight(self) -> int:
        """Requests submitted and not yet finished."""
        return len(self._inflight)

    def inflight_ids(self) -> list[str]:
        """Ids of the requests in flight (a snapshot)."""
        with self._cond:
            return list(self._inflight)

    # -------------------------------------------------------------------------------- engine thread
    def collect(self) -> set[str]:
        """Move new submissions into ``waiting``; return the ids asked to be cancelled."""
        if not self._inbox and not self._cancels:  # unlocked peek: anything posted now is seen next step
            return set()
        with self._cond:
            inbox, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, set()
        self.waiting.extend(inbox)
        return cancels

    def pop_admissible(self, free_rows: int) -> Sequence | None:
        """The next request to prefill, if a row is free for it (FCFS)."""
        if not self.waiting or free_rows < 1:
            return None
        seq = self.waiting.popleft()
        with self._cond:
            self._queued -= 1
        return seq

    def drop_waiting(self, seq: Sequence) -> None:
        """Remove a still-waiting request (cancelled or expired)."""
        self.waiting.remove(seq)
        with self._cond:
            self._queued -= 1

    def done(self, request_id: str) -> None:
        """The request has finished and sent its last event."""
        with self._cond:
            self._inflight.discard(request_id)
            self._cancels.discard(request_id)
