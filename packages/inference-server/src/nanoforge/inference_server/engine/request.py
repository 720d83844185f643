"""What goes into the engine and what comes out, at the token level.

``EngineRequest`` is one request (prompt token ids + sampling options + a callback); the engine calls
``emit`` from its own thread with one ``EngineEvent`` per generated token and a final event carrying
``finish_reason`` (or ``error``) and ``RequestStats``. ``Sequence`` is the engine's private bookkeeping of a
request while it waits, prefills and decodes.
What it does not do: text, chat or stop strings (``text.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nanoforge.inference_server.engine.prefix_cache import Block
from nanoforge.inference_server.engine.sampling import LogitsProcessor, RowSampler
from nanoforge.inference_server.errors import InferenceError
from nanoforge.inference_server.types import SamplingOptions, Usage


@dataclass
class RequestStats:
    """Token counts and ``time.monotonic()`` timestamps of one request."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    submitted: float = 0.0
    admitted: float = 0.0
    first_token: float = 0.0
    finished: float = 0.0

    def usage(self) -> Usage:
        """The request's ``Usage`` (milliseconds; 0 for phases it never reached)."""

        def ms(a: float, b: float) -> float:
            return max(0.0, (b - a) * 1000.0) if a and b else 0.0

        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens,
            queue_ms=ms(self.submitted, self.admitted or self.finished),
            prefill_ms=ms(self.admitted, self.first_token),
            decode_ms=ms(self.first_token, self.finished),
            total_ms=ms(self.submitted, self.finished),
            ttft_ms=ms(self.submitted, self.first_token),
        )


@dataclass
class EngineEvent:
    """One output of the engine for one request.

    Attributes:
        request_id: the request's id.
        token_id: the new token (None on a final event without a token, e.g. cancelled).
        logprob: its log-probability when asked for.
        top: ``[(token_id, logprob)]`` alternatives when asked for.
        finish_reason: None while running; "stop" (a stop token, which is ``token_id``), "length" or
            "cancelled" on the last event.
        error: set (and finish_reason None) when the request failed, e.g. ``DeadlineExceeded``.
        stats: the request's live counters (final on the last event).
    """

    request_id: str
    token_id: int | None = None
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    error: InferenceError | None = None
    stats: RequestStats | None = None

    @property
    def final(self) -> bool:
        """True on the request's last event."""
        return self.finish_reason is not None or self.error is not None


@dataclass
class EngineRequest:
    """A token-level generation request.

    Attributes:
        prompt_ids: the prompt's token ids (at least one).
        options: validated sampling options (``stop`` strings are ignored here; ``stop_token_ids`` used).
        emit: called from the engine thread with each ``EngineEvent``; must be fast and not block.
        request_id: unique among in-flight requests.
        deadline: ``time.monotonic()`` deadline or None.
        logits_processors: per-request processors (structured output hooks).
        cache_salt: separates prefix-cache entries of different weights (e.g. the adapter name).
        adapter: the LoRA adapter this request's rows use (None = the base model); see ``Engine.router``.
    """

    prompt_ids: list[int]
    options: SamplingOptions
    emit: Callable[[EngineEvent], None]
    request_id: str
    deadline: float | None = None
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    cache_salt: str = ""
    adapter: str | None = None


@dataclass(eq=False)  # identity equality: deque.remove / `in` must never compare tensors
class Sequence:
    """The engine's state of one request (engine thread only)."""

    req: EngineRequest
    max_new: int  # max_new_tokens clipped to the context left after the prompt
    sampler: RowSampler
    stop_ids: frozenset[int]
    stats: RequestStats
    keys: list[bytes] = field(default_factory=list)  # prefix-cache keys of the prompt's full blocks
    blocks: list[Block] = field(default_factory=list)  # cache blocks this request pins
    prefilled: int = 0  # prompt tokens already in its state
    generated: list[int] = field(default_factory=list)
    row: int | None = None  # row in the RowTable once decoding

    @property
    def request_id(self) -> str:
        """The request's id."""
        return self.req.request_id

    def expired(self, now: float) -> bool:
        """True once ``now`` (``time.monotonic()``) has reached the request's deadline."""
        return self.req.deadline is not None and now >= self.req.deadline
