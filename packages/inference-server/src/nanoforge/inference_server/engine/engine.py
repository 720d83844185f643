"""The synchronous engine: continuous batching with chunked prefill and a prefix cache, token ids only.

One iteration (``step``), run by ONE background thread (or by a test, directly):

1. collect new requests and cancellations; drop cancelled and expired requests at once (their row is reset
   and their prefix-cache blocks are released);
2. prefill: up to ``prefill_chunk`` prompt tokens, from the request being prefilled and then from newly
   admitted ones (a request is admitted when a row is free). A request is prefilled alone in a 1-row state,
   starting from its longest cached prefix; a long prompt takes several iterations, so it never stalls the
   running batch for more than one chunk. When its prompt is done its first token is sampled and its row
   is copied into the running batch;
3. decode: one token for every running request in ONE forward over the batch's rows (rows of different
   lengths are exact: core-model writes and masks per row). Finished rows leave the batch between steps.

So new requests join the running batch between decode steps (iteration-level batching). Every attention
variant runs through core-model's ``ModelState`` interface; see ``prefix_cache`` for what caching does for
non-softmax layers. Limits: a prompt needs at most ``max_len - 1`` tokens (else ``InvalidRequest`` naming
the limit); ``max_new_tokens`` is clipped to the room left (``max_len - prompt``) and such a request ends
with finish_reason "length".
What it does not do: text (``text.py``), asyncio (``async_engine``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from nanoforge.core_model.model import GPT
from nanoforge.inference_server.engine.kv import RowTable, row_bytes, set_prefix
from nanoforge.inference_server.engine.prefix_cache import PrefixCache, chain_keys
from nanoforge.inference_server.engine.request import EngineEvent, EngineRequest, RequestStats, Sequence
from nanoforge.inference_server.engine.sampling import Draw, RowSampler, sample_batch
from nanoforge.inference_server.engine.scheduler import Scheduler
from nanoforge.inference_server.errors import DeadlineExceeded, InferenceError, InvalidRequest

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class EngineConfig:
    """Engine knobs.

    Attributes:
        max_batch_size: most requests decoding together (rows of the decode state).
        max_len: slots per row = longest prompt + output (default: the model's max_seq_len).
        kv_budget_tokens: cap on decode-state slots (rows * max_len); lowers the row count to fit.
        max_queue: most requests waiting for a row; more get QueueFull.
        prefill_chunk: prompt tokens prefilled per iteration (rounded up to a multiple of block_size).
        block_size: prefix-cache block size in tokens.
        prefix_cache_tokens: prefix-cache capacity in tokens (default 4 * max_len; 0 disables it).
    """

    max_batch_size: int = 8
    max_len: int | None = None
    kv_budget_tokens: int | None = None
    max_queue: int = 64
    prefill_chunk: int = 256
    block_size: int = 16
    prefix_cache_tokens: int | None = None

    def check(self) -> None:
        """Raises ValueError naming a bad field and its accepted range."""
        for name in ("max_batch_size", "max_queue", "prefill_chunk", "block_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an int >= 1")
        for name in ("max_len", "kv_budget_tokens", "prefix_cache_tokens"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < (0 if name == "prefix_cache_tokens" else 2)):
                raise ValueError(f"{name}={v!r} must be None or an int >= 2 (prefix_cache_tokens: >= 0)")


def _position_limited(model: GPT) -> bool:
    c = model.config
    return c.positions == "learned" or any(c.layer_attention(i) == "linformer" for i in range(c.n_layer))


class Engine:
    """Continuous-batching engine over one ``GPT``. Thread-safe: ``submit``, ``cancel``, ``metrics``."""

    def __init__(self, model: GPT, config: EngineConfig | None = None) -> None:
        config = config or EngineConfig()
        config.check()
        if not model.supports_decode:
            model.new_state(1, 1)  # raises core-model's clear "no incremental decode state" error
        self.model = model.eval()
        self.config = config
        max_len = config.max_len or model.config.max_seq_len
        if _position_limited(model) and max_len > model.config.max_seq_len:
            raise ValueError(
                f"max_len={max_len} exceeds the model's max_seq_len={model.config.max_seq_len} "
                f"(positions={model.config.positions!r} cannot go further)"
            )
        rows = config.max_batch_size
        if config.kv_budget_tokens is not None:
            rows = min(rows, config.kv_budget_tokens // max_len)
            if rows < 1:
                raise ValueError(
                    f"kv_budget_tokens={config.kv_budget_tokens} is less than one row of max_len={max_len} "
                    "slots; raise the budget or lower max_len"
                )
        self.max_len = max_len
        self.vocab_size = model.config.vocab_size
        self.table = RowTable(model, rows, max_len)
        self.pre = model.new_state(1, max_len)  # the prefill row
        bs = config.block_size
        cache_tokens = 4 * max_len if config.prefix_cache_tokens is None else config.prefix_cache_tokens
        self.cache = PrefixCache(model, bs, cache_tokens // bs)
        self.chunk = max(bs, -(-config.prefill_chunk // bs) * bs)
        self.sched = Scheduler(config.max_queue)
        self.running: list[Sequence] = []  # running[i] decodes in row i
        self.prefilling: Sequence | None = None
        self._jobs: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._jobs_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._counters: dict[str, float] = {
            "steps": 0,
            "decode_steps": 0,
            "decode_rows": 0,  # sum of the decode batch sizes (/ decode_steps = mean batch)
            "tokens": 0,
            "prefill_tokens": 0,
            "finished": 0,
            "prefill_seconds": 0.0,  # wall time of prefill forwards + their first-token sampling
            "decode_seconds": 0.0,  # wall time of decode steps (forward + sampling + bookkeeping)
        }
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps, for tokens/s
        self._ttft: deque[float] = deque(maxlen=256)
        self._last_batch = 0
        self.row_bytes = row_bytes(model, max_len)
        # Multi-LoRA hook: called with each row's adapter before a forward and with None after it.
        self.router: Callable[[list[str | None] | None], None] | None = None

    # ----------------------------------------------------------------------------------- any thread
    def submit(self, req: EngineRequest) -> None:
        """Queue a request; its events arrive through ``req.emit`` from the engine thread.

        Raises:
            InvalidRequest: bad options, empty / out-of-vocabulary / too long prompt, duplicate id.
            QueueFull: the queue is full. Unavailable: shutting down.
        """
        req.options.validate()
        n_prompt = len(req.prompt_ids)
        if n_prompt == 0:
            raise InvalidRequest("the prompt is empty; give at least one token")
        bad = [t for t in req.prompt_ids if not (isinstance(t, int) and 0 <= t < self.vocab_size)]
        if bad:
            raise InvalidRequest(
                f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})"
            )
        if n_prompt >= self.max_len:
            raise InvalidRequest(
                f"prompt has {n_prompt} tokens but the limit is {self.max_len - 1} (context max_len={self.max_len}, "
                "minus one token to generate); shorten the prompt"
            )
        bad_stop = [t for t in req.options.stop_token_ids if t >= self.vocab_size]
        if bad_stop:
            raise InvalidRequest(
                f"stop_token_ids {bad_stop[:5]} are outside the vocabulary [0, {self.vocab_size})"
            )
        sampler = RowSampler.from_options(
            req.options,
            req.prompt_ids,
            self.vocab_size,
            req.logits_processors,
            self.table.state.lengths.device,
        )
        seq = Sequence(
            req=req,
            max_new=min(req.options.max_new_tokens, self.max_len - n_prompt),
            sampler=sampler,
            stop_ids=frozenset(req.options.stop_token_ids),
            stats=RequestStats(prompt_tokens=n_prompt, submitted=time.monotonic()),
        )
        self.sched.submit(seq)

    def cancel(self, request_id: str) -> None:
        """Drop a request: its memory is freed at the next iteration and it ends with "cancelled"."""
        self.sched.cancel(request_id)

    def run_exclusive(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the engine thread between iterations (it owns the model); inline when not started."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._thread is None or not self._thread.is_alive():
            try:
                with torch.inference_mode():
                    fut.set_result(fn())
            except Exception as e:
                fut.set_exception(e)
            return fut
        with self._jobs_lock:
            self._jobs.append((fn, fut))
        self.sched.wake()
        return fut

    def metrics(self) -> dict[str, float]:
        """Queue depth, running requests, batch size, tokens/s, TTFT and prefix-cache counters."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= 10.0]
        span = (now - recent[0][0]) if len(recent) > 1 else 0.0
        ttft = sorted(self._ttft)
        st = self.cache.stats
        return {
            "queue_depth": self.sched.queued,
            "running": self.table.count + (1 if self.prefilling is not None else 0),
            "inflight": self.sched.inflight,
            "batch_size": self._last_batch,
            "max_batch_size": self.table.capacity,
            "kv_slots_used": self.table.used_slots(),
            "kv_slots_total": self.table.capacity * self.max_len,
            "kv_bytes": self.table.capacity * self.row_bytes,
            "tokens_per_s": (sum(n for _, n in recent[1:]) / span) if span > 0 else 0.0,
            "ttft_ms_p50": 1000 * ttft[len(ttft) // 2] if ttft else 0.0,
            "ttft_ms_mean": 1000 * sum(ttft) / len(ttft) if ttft else 0.0,
            "prefix_cache_hit_rate": st.hit_rate,
            "prefix_cache_hit_tokens": st.hit_tokens,
            "prefix_cache_blocks": len(self.cache),
            "prefix_cache_pinned_blocks": self.cache.pinned(),
            "prefix_cache_evictions": st.evicted_blocks,
            **{f"total_{k}": v for k, v in self._counters.items()},
        }

    # ------------------------------------------------------------------------------ thread control
    def start(self) -> None:
        """Start the background thread that runs ``step`` whenever there is work."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="nanoforge-engine", daemon=True)
        self._thread.start()

    def shutdown(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking requests; with ``drain`` let in-flight ones finish (up to ``timeout`` s), then cancel
        what is left and stop the thread."""
        self.sched.close()
        end = time.monotonic() + (timeout if drain else 0.0)
        while self.sched.inflight and time.monotonic() < end:
            if self._thread is None:
                self.step()
            else:
                time.sleep(0.005)
        for rid in self.sched.inflight_ids():
            self.cancel(rid)
        if self._thread is not None:
            while self.sched.inflight and self._thread.is_alive():
                time.sleep(0.005)
            self._stop.set()
            self.sched.wake()
            self._thread.join(timeout=10)
            self._thread = None
        else:
            self.run_until_idle()

    def run_until_idle(self, max_steps: int = 1_000_000) -> int:
        """Run ``step`` until nothing is in flight (tests / single-threaded use). Returns the steps run."""
        n = 0
        while self.sched.inflight and n < max_steps:
            self.step()
            n += 1
        return n

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    busy = self.step()
                except Exception as e:  # a bug must not hang every client: fail them all and go on
                    log.exception("engine iteration failed")
                    self._fail_all(InferenceError(f"internal engine error: {type(e).__name__}: {e}"))
                    busy = False
                if not busy:  # short naps while requests wait (deadlines), long ones when idle
                    self.sched.wait(0.02 if self.sched.inflight else 0.5)

    # ---------------------------------------------------------------------------------- one iteration
    @torch.inference_mode()
    def step(self) -> bool:
        """One iteration: housekeeping, up to one chunk of prefill, one decode step. Returns True if any
        model work was done."""
        self._run_jobs()
        cancels = self.sched.collect()
        now = time.monotonic()
        for seq in self._live():
            if seq.request_id in cancels:
                self._finish(seq, "cancelled")
            elif seq.expired(now):
                self._finish(seq, None, DeadlineExceeded(f"request {seq.request_id!r} passed its deadline"))
        busy = False
        budget = self.chunk
        while budget > 0:
            if self.prefilling is None:
                admitted = self.sched.pop_admissible(self.table.free)
                if admitted is None:
                    break
                self._start_prefill(admitted)
            budget -= self._prefill_some(budget)
            busy = True
        if self.running:
            self._decode_step()
            busy = True
        if busy:
            self._counters["steps"] += 1
        return busy

    def _live(self) -> list[Sequence]:
        seqs = [*self.sched.waiting, *self.running]
        if self.prefilling is not None:
            seqs.append(self.prefilling)
        return seqs

    def _run_jobs(self) -> None:
        if not self._jobs:  # unlocked peek (the common case): a job queued now runs next iteration
            return
        while True:
            with self._jobs_lock:
                if not self._jobs:
                    return
                fn, fut = self._jobs.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as e:
                    fut.set_exception(e)

    def _start_prefill(self, seq: Sequence) -> None:
        seq.stats.admitted = time.monotonic()
        self.pre.reset_rows([0])
        prompt = seq.req.prompt_ids
        if self.cache.enabled:
            seq.keys = chain_keys(prompt, self.cache.block_size, seq.req.cache_salt)
            usable = (len(prompt) - 1) // self.cache.block_size  # keep >= 1 token to compute logits from
            seq.blocks = self.cache.match(seq.keys[:usable], prompt)
            self.cache.acquire(seq.blocks)
            n = self.cache.restore(seq.blocks, self.pre)
            if n:
                set_prefix(self.pre, n)
            seq.prefilled = n
            seq.stats.cached_prompt_tokens = n
        self.prefilling = seq

    def _prefill_some(self, budget: int) -> int:
        """Prefill up to ``budget`` tokens of the current request; returns the tokens used (>= 1)."""
        seq = self.prefilling
        assert seq is not None
        prompt = seq.req.prompt_ids
        start = seq.prefilled
        end = min(len(prompt), start + budget)
        bs = self.cache.block_size
        if self.cache.enabled and self.cache.needs_snapshots and start < len(seq.keys) * bs:
            end = min(
                end, (start // bs + 1) * bs
            )  # snapshots exist only at chunk ends: stop at the block end
        t0 = time.perf_counter()
        ids = torch.tensor(prompt[start:end], dtype=torch.long, device=self.pre.lengths.device)[
            None
        ]  # (1, t)
        logits = self._forward([seq], ids, self.pre)  # (1, V)
        seq.prefilled = end
        self._counters["prefill_tokens"] += end - start
        if self.cache.enabled:
            for j in range(len(seq.blocks), min(end // bs, len(seq.keys))):
                if self.cache.needs_snapshots and (j + 1) * bs != end:
                    break
                blk = self.cache.insert(seq.keys[j], prompt[j * bs : (j + 1) * bs], j, self.pre)
                if blk is None:
                    break
                self.cache.acquire([blk])
                seq.blocks.append(blk)
        if end == len(prompt):
            self.prefilling = None
            draw = sample_batch(logits, [seq.sampler], [seq.generated])[0]
            if not self._on_token(seq, draw):
                seq.row = self.table.add(self.pre)
                self.running.append(seq)
        self._counters["prefill_seconds"] += time.perf_counter() - t0
        return end - start

    def _decode_step(self) -> None:
        t0 = time.perf_counter()
        seqs = self.running
        idx = self.table.last_tokens_tensor([s.generated[-1] for s in seqs])  # (n, 1)
        logits = self._forward(seqs, idx, self.table.view())  # (n, V)
        draws = sample_batch(logits, [s.sampler for s in seqs], [s.generated for s in seqs])
        self._last_batch = len(seqs)
        self._counters["decode_steps"] += 1
        self._counters["decode_rows"] += len(seqs)
        done = [s for s, d in zip(list(seqs), draws) if self._on_token(s, d)]
        for s in sorted(done, key=lambda s: s.row or 0, reverse=True):
            self._release_row(s)
        self._counters["decode_seconds"] += time.perf_counter() - t0

    def _forward(self, seqs: list[Sequence], ids: torch.Tensor, state: Any) -> torch.Tensor:
        """Last-position logits (n, V) of ``seqs``' rows; the router (if any) learns each row's adapter."""
        if self.router is None:
            return self.model(ids, state=state, last_only=True)[:, -1]
        self.router([s.req.adapter for s in seqs])
        try:
            return self.model(ids, state=state, last_only=True)[:, -1]
        finally:
            self.router(None)

    # ------------------------------------------------------------------------------------ bookkeeping
    def _on_token(self, seq: Sequence, draw: Draw) -> bool:
        """Record and emit a token; finish the request when it ends. Returns True when it finished."""
        if draw.error is not None:
            self._close(seq)
            self._emit(seq, EngineEvent(seq.request_id, error=InferenceError(draw.error), stats=seq.stats))
            self.sched.done(seq.request_id)
            return True
        now = time.monotonic()
        seq.generated.append(draw.token_id)
        seq.stats.completion_tokens += 1
        if seq.stats.first_token == 0.0:
            seq.stats.first_token = now
            self._ttft.append(now - seq.stats.submitted)
        self._counters["tokens"] += 1
        self._recent.append((now, 1))
        while self._recent and now - self._recent[0][0] > 10.0:
            self._recent.popleft()
        reason = None
        if draw.token_id in seq.stop_ids:
            reason = "stop"
        elif len(seq.generated) >= seq.max_new:
            reason = "length"
        if reason is not None:
            self._close(seq)
        event = EngineEvent(seq.request_id, draw.token_id, draw.logprob, draw.top, reason, stats=seq.stats)
        ok = self._emit(seq, event)
        if reason is not None:
            self.sched.done(seq.request_id)
            return True
        if not ok:  # the receiver is gone: drop the request at the next iteration
            self.sched.cancel(seq.request_id)
        return False

    def _close(self, seq: Sequence) -> None:
        """Free a finished request's cache pins and count it (its row is released by the caller)."""
        self.cache.release(seq.blocks)
        seq.blocks = []
        seq.stats.finished = time.monotonic()
        self._counters["finished"] += 1

    def _release_row(self, seq: Sequence) -> None:
        assert seq.row is not None
        row = seq.row
        moved = self.table.remove(row)
        if moved is not None:
            self.running[row] = self.running[moved]
            self.running[row].row = row
        self.running.pop()
        seq.row = None

    def _finish(self, seq: Sequence, reason: str | None, error: InferenceError | None = None) -> None:
        """End a request that did not finish by itself (cancelled / expired / failed); frees it at once."""
        if seq.row is not None:
            self._release_row(seq)
        elif seq is self.prefilling:
            self.prefilling = None
            self.pre.reset_rows([0])
        elif seq in self.sched.waiting:
            self.sched.drop_waiting(seq)
        self._close(seq)
        self._emit(seq, EngineEvent(seq.request_id, finish_reason=reason, error=error, stats=seq.stats))
        self.sched.done(seq.request_id)

    def _emit(self, seq: Sequence, event: EngineEvent) -> bool:
        try:
            seq.req.emit(event)
            return True
        except Exception:
            log.exception("emit callback of request %s failed; dropping it", seq.request_id)
            return False

    def _fail_all(self, error: InferenceError) -> None:
        for seq in self._live():
            self._finish(seq, None, error)
        self.pre.reset_rows([0])


__all__ = ["Engine", "EngineConfig"]
