"""asyncio facade over the threaded ``Engine``.

``AsyncEngine.stream`` submits a request and yields its ``EngineEvent``s: the engine thread hands events to
the caller's event loop through a ``_Mailbox`` (a locked list plus at most one pending
``loop.call_soon_threadsafe`` wake-up, so one decode step of N requests wakes the loop once, not N times),
which puts each event into its request's ``asyncio.Queue``. Closing the
iterator early (``aclose``, ``break`` + garbage collection, or cancelling the awaiting task) cancels the
request, which frees its row and prefix-cache pins at the engine's next iteration. A request that fails in
the engine (e.g. ``DeadlineExceeded``) raises that error from the iterator.
What it does not do: text (``text.py``).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TypeVar

from nanoforge.inference_server.engine.engine import Engine
from nanoforge.inference_server.engine.request import EngineEvent, EngineRequest
from nanoforge.inference_server.engine.sampling import LogitsProcessor
from nanoforge.inference_server.types import SamplingOptions

T = TypeVar("T")


class _Mailbox:
    """Events from the engine thread to one event loop, delivered in order with few loop wake-ups."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[EngineEvent], EngineEvent]] = []
        self._scheduled = False

    def post(self, queue: asyncio.Queue[EngineEvent], event: EngineEvent) -> None:
        """Engine thread: queue an event; wake the loop unless a wake-up is already pending."""
        with self._lock:
            self._items.append((queue, event))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for queue, event in items:
            queue.put_nowait(event)


class AsyncEngine:
    """Starts ``engine``'s background thread and exposes it to coroutines."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
            weakref.WeakKeyDictionary()
        )
        engine.start()

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        box = self._mailboxes.get(loop)
        if box is None:
            box = self._mailboxes[loop] = _Mailbox(loop)
        return box

    async def stream(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        *,
        request_id: str | None = None,
        deadline: float | None = None,
        logits_processors: Sequence[LogitsProcessor] = (),
        cache_salt: str = "",
        adapter: str | None = None,
    ) -> AsyncGenerator[EngineEvent, None]:
        """Submit a request and yield its events until the final one.

        Raises:
            InvalidRequest, QueueFull, Unavailable: on submission (first iteration).
            DeadlineExceeded or another ``InferenceError``: when the engine fails the request.
        """
        box = self._mailbox(asyncio.get_running_loop())
        queue: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def emit(event: EngineEvent) -> None:
            box.post(queue, event)

        rid = request_id or uuid.uuid4().hex
        self.engine.submit(
            EngineRequest(
                prompt_ids=list(prompt_ids),
                options=options,
                emit=emit,
                request_id=rid,
                deadline=deadline,
                logits_processors=list(logits_processors),
                cache_salt=cache_salt,
                adapter=adapter,
            )
        )
        finished = False
        try:
            while True:
                event = await queue.get()
                if event.error is not None:
                    finished = True
                    raise event.error
                if event.final:
                    finished = True
                yield event
                if finished:
                    return
        finally:
            if not finished:
                self.engine.cancel(rid)

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine thread (which owns the model) and await its result."""
        return await asyncio.wrap_future(self.engine.run_exclusive(fn))

    async def shutdown(self, drain: bool = True, timeout: float = 30.0) -> None:
        """See ``Engine.shutdown``; runs in a worker thread so the event loop keeps serving."""
        await asyncio.to_thread(self.engine.shutdown, drain, timeout)
