"""The serving model: tokenizer + engine + chat rendering + stop strings + streaming text + logprobs.

``ServingModel`` is what the gRPC and HTTP servers call. It turns a ``GenerateInput`` (text, token ids or
chat messages) into prompt ids (chat: ``render_chat(..., add_generation_prompt=True, tools=...)``), runs it
through the ``AsyncEngine`` and turns the token events back into ``GenerationChunk`` deltas:

* text deltas come from the tokenizer's stream decoder (never broken UTF-8) through ``detok.TextStream``,
  which trims stop strings (the request is cancelled in the engine as soon as one appears) and, when tools
  are given, holds back tool-call markup, parsed at the end with ``parse_tool_calls`` into OpenAI-shaped
  ``tool_calls`` (finish_reason "tool_calls"); markup that does not parse is shown as text. ``tool_choice="none"``
  does not offer the tools at all; "auto" parses free output; "required" and a named function CONSTRAIN the
  output to one valid call (``structured``);
* ``response_format`` (json_schema / json_object / regex / choice) constrains decoding with a token mask per
  step (``structured``; guides are compiled in a worker thread, off the event loop, and cached); the
  request ends as soon as the structure is complete. When ``max_new_tokens`` runs
  out first, finish_reason is "length" and the final chunk has ``incomplete=True`` (the text does not parse);
* ``token_ids`` and ``logprobs`` stream one entry per generated token (a stop token ends the request with
  "stop" and is neither shown nor listed; it is counted in ``usage.completion_tokens``);
* the last chunk carries ``finish_reason`` and ``usage``.

The end-of-turn / end-of-text special tokens the tokenizer defines (and ``eos_token_id`` of
``generation_config.json``) are always stop tokens. Text prompts (and score contexts, embed inputs) get a
BOS token when the tokenizer says its model expects one (``add_bos_token``, HF Llama-style). ``score``
tokenizes context and continuations separately and concatenates the ids.

Quantization (``load(quantize="int8" | "int4" ...)``, see ``quant``) swaps the model's linear layers at load.
LoRA adapters (``load(adapters=...)``, ``load_adapter`` / ``unload_adapter``, see ``lora``) are chosen per
request with ``GenerateInput.adapter``; requests on different adapters share the engine's batch. Score and
embed take an ``adapter`` too (their rows all use it); ``score_with_usage`` / ``embed_with_usage`` also
return a ``Usage`` whose queue time is the wait for the engine thread and whose prefill time is the forwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nanoforge.core_model.checkpoint import read_generation_config
from nanoforge.core_model.hf import load_any_model
from nanoforge.core_model.model import GPT
from nanoforge.inference_server.detok import TextStream
from nanoforge.inference_server.engine import AsyncEngine, Engine, EngineConfig
from nanoforge.inference_server.engine.request import RequestStats
from nanoforge.inference_server.errors import InvalidRequest, NotFound
from nanoforge.inference_server.lora import AdapterSet
from nanoforge.inference_server.quant import QUANTIZERS, quantize_model
from nanoforge.inference_server.scoring import embed_rows, score_rows
from nanoforge.inference_server.structured import Guide, GuideProcessor, Structurer
from nanoforge.inference_server.types import GenerateInput, GenerationChunk, TokenLogprob, Usage
from nanoforge.tokenizer.chat import get_template, parse_tool_calls, render_chat
from nanoforge.tokenizer.hf import load_any_tokenizer

T = TypeVar("T")

#: Special tokens that end a turn or a text in the tokenizers we load; generation stops on them.
END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<|end|>")


class ServingModel:
    """A loaded model ready to serve. Build with ``load`` (a model dir) or ``from_parts`` (objects)."""

    def __init__(
        self, model: GPT, tokenizer: Any, engine: Engine, name: str, extra_stop_ids: Sequence[int] = ()
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.engine = engine
        self.aengine = AsyncEngine(engine)
        specials = dict(getattr(tokenizer, "special_tokens", {}) or {})
        self.stop_ids = sorted({specials[t] for t in END_TOKENS if t in specials} | set(extra_stop_ids))
        # HF tokenizers of models trained with a BOS in front (Llama) say so; prompts then get one too.
        self.add_bos = bool(getattr(tokenizer, "add_bos_token", False))
        tpl = getattr(tokenizer, "chat_template", None)
        self._tool_template: Any = get_template(tpl) if isinstance(tpl, dict) else "chatml"
        markers = get_template(self._tool_template)
        self.structurer = Structurer(
            tokenizer,
            model.config.vocab_size,
            self.stop_ids,
            (markers["tool_call_start"], markers["tool_call_end"]),
        )
        self.adapters = AdapterSet(model)
        self._adapter_users: dict[str, int] = {}  # adapter -> requests in flight on it
        engine.router = self.adapters.route

    # ---------------------------------------------------------------------------------- construction
    @classmethod
    def from_parts(
        cls,
        model: GPT,
        tokenizer: Any,
        *,
        name: str = "model",
        config: EngineConfig | None = None,
        extra_stop_ids: Sequence[int] = (),
    ) -> ServingModel:
        """Serve an in-memory model and tokenizer (tests, notebooks)."""
        return cls(model, tokenizer, Engine(model, config), name, extra_stop_ids)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        name: str | None = None,
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
        kv_budget_tokens: int | None = None,
        max_queue: int = 64,
        quantize: str | None = None,
        adapters: dict[str, str | Path] | None = None,
        device: str = "cpu",
        prefill_chunk: int = 256,
        prefix_cache_tokens: int | None = None,
    ) -> ServingModel:
        """Load a nanoforge or HF model directory (with its tokenizer) and start its engine.

        Raises:
            FileNotFoundError: no such directory / tokenizer. ValueError: bad config values.
            InvalidRequest: unknown ``quantize`` mode or an adapter that cannot be loaded.
        """
        if quantize is not None and quantize not in QUANTIZERS:
            raise InvalidRequest(f"quantize={quantize!r} is not supported; accepted: {', '.join(QUANTIZERS)}")
        model = load_any_model(model_dir).eval()
        if quantize is not None:
            quantize_model(model, quantize)
        model = model.to(device)
        tokenizer = load_any_tokenizer(model_dir)
        eos = read_generation_config(model_dir).get("eos_token_id") if Path(model_dir).is_dir() else None
        eos_ids = [eos] if isinstance(eos, int) else [e for e in (eos or []) if isinstance(e, int)]
        config = EngineConfig(
            max_batch_size=max_batch_size,
            max_len=max_seq_len,
            kv_budget_tokens=kv_budget_tokens,
            max_queue=max_queue,
            prefill_chunk=prefill_chunk,
            prefix_cache_tokens=prefix_cache_tokens,
        )
        served = cls.from_parts(
            model, tokenizer, name=name or Path(model_dir).name, config=config, extra_stop_ids=eos_ids
        )
        try:
            for adapter_name, adapter_dir in (adapters or {}).items():
                served._add_adapter(adapter_name, adapter_dir, replace=False)
        except BaseException:
            served.engine.shutdown(drain=False)  # do not leave the engine thread behind
            raise
        return served

    # --------------------------------------------------------------------------------------- text
    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """Text -> ids. Special-token strings in ``text`` stay text; ``add_special`` prepends BOS when the
        tokenizer has one."""
        ids = self.tokenizer.encode(text, allowed_special="none")
        bos = getattr(self.tokenizer, "bos_id", None)
        return [bos, *ids] if add_special and isinstance(bos, int) else ids

    def detokenize(self, ids: Sequence[int]) -> str:
        """Ids -> text. Raises InvalidRequest for ids outside the vocabulary."""
        V = self.tokenizer.vocab_size
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < V)]
        if bad:
            raise InvalidRequest(f"token ids {bad[:5]} are outside the vocabulary [0, {V})")
        return self.tokenizer.decode(list(ids))

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")

    def prompt_ids(self, inp: GenerateInput) -> list[int]:
        """The prompt token ids of a request (chat messages rendered with a generation prompt)."""
        if inp.prompt_ids is not None:
            return list(inp.prompt_ids)
        if inp.prompt is not None:
            return self.tokenize(inp.prompt, add_special=self.add_bos)
        try:
            return render_chat(
                self.tokenizer,
                inp.messages or [],
                add_generation_prompt=True,
                tools=(inp.tools or None) if inp.tool_choice != "none" else None,
            ).ids
        except ValueError as e:
            raise InvalidRequest(f"invalid chat request: {e}") from None

    # --------------------------------------------------------------------------------- generation
    def _check(self, inp: GenerateInput) -> None:
        inp.validate()
        self._require_adapter(inp.adapter)
        if inp.tools is not None and inp.messages is None:
            raise InvalidRequest("tools need a chat request (messages), not a raw prompt")

    async def _guide(self, inp: GenerateInput) -> Guide | None:
        """The request's structured-output guide. Compiling one (a DFA over a JSON schema, seconds for a
        big one) runs in a worker thread so the event loop keeps serving other streams meanwhile."""
        if inp.response_format is None and inp.tool_choice in (None, "none", "auto"):
            return self.structurer.for_request(None, inp.tools, inp.tool_choice)  # checks only, no guide
        return await asyncio.to_thread(
            self.structurer.for_request, inp.response_format, inp.tools, inp.tool_choice
        )

    async def generate(self, inp: GenerateInput) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a request's chunks. Closing the iterator early cancels the request (its row is freed).

        Raises:
            InvalidRequest / NotFound / QueueFull / Unavailable / DeadlineExceeded (see ``errors``).
        """
        self._check(inp)
        guide = await self._guide(inp)
        ids = self.prompt_ids(inp)
        opts = inp.options
        options = type(opts)(
            **{**opts.__dict__, "stop_token_ids": sorted(set(opts.stop_token_ids) | set(self.stop_ids))}
        )
        use_tools = bool(inp.tools) and inp.tool_choice != "none"
        hold = get_template(self._tool_template)["tool_call_start"] if use_tools else None
        stream = TextStream(self.tokenizer.stream_decoder(), opts.stop, hold_from=hold)
        adapter = inp.adapter or None
        events = self.aengine.stream(
            ids,
            options,
            request_id=f"{inp.request_id}#{uuid.uuid4().hex[:12]}",
            deadline=inp.deadline,
            adapter=adapter,
            cache_salt=self.adapters.cache_salt(adapter),
            logits_processors=[GuideProcessor(guide)] if guide is not None else (),
        )
        tracker = guide.start() if guide is not None else None  # ends the request once the structure is done
        stats: RequestStats | None = None
        n_tokens = 0
        if adapter:
            self._adapter_users[adapter] = self._adapter_users.get(adapter, 0) + 1
        try:
            async for ev in events:
                stats = ev.stats
                chunk = GenerationChunk()
                if ev.token_id is not None:
                    n_tokens += 1
                    if ev.finish_reason != "stop":
                        chunk.text = stream.push(ev.token_id)
                        chunk.token_ids = [ev.token_id]
                        if opts.logprobs or opts.top_logprobs:
                            chunk.logprobs = [self._logprob(ev.token_id, ev.logprob, ev.top)]
                reason = ev.finish_reason
                if tracker is not None and ev.token_id is not None:
                    tracker.advance(ev.token_id)
                    # Structure done: "stop", even when it was done on the last allowed token.
                    if tracker.complete and reason in (None, "length"):
                        reason = "stop"
                if stream.stopped:
                    reason = "stop"
                if reason is not None:
                    final = self._final(chunk, stream, reason, stats, n_tokens)
                    final.incomplete = tracker is not None and not tracker.complete
                    yield final
                    return
                if chunk.text or chunk.token_ids:
                    yield chunk
        finally:
            await events.aclose()  # cancels the engine request if it is still running
            if adapter:
                self._adapter_users[adapter] -= 1

    def _logprob(self, token_id: int, logprob: float | None, top: list[tuple[int, float]]) -> TokenLogprob:
        return TokenLogprob(
            token_id=token_id,
            text=self._token_text(token_id),
            logprob=float(logprob if logprob is not None else 0.0),
            top=[(t, self._token_text(t), lp) for t, lp in top],
        )

    def _final(
        self, chunk: GenerationChunk, stream: TextStream, reason: str, stats: RequestStats | None, n: int
    ) -> GenerationChunk:
        if reason != "cancelled":
            chunk.text += stream.finish()
        if stream.held:
            try:
                calls = parse_tool_calls(stream.held, self._tool_template)
            except ValueError:
                calls = []
            if calls and reason != "length":
                chunk.tool_calls = [
                    {
                        "id": f"call_{uuid.uuid4().hex[:24]}",
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))},
                    }
                    for c in calls
                ]
                reason = "tool_calls"
            else:
                chunk.text += stream.release_held()
        chunk.finish_reason = reason
        chunk.usage = _usage(stats, n)
        return chunk

    async def complete(self, inp: GenerateInput) -> GenerationChunk:
        """Run a request to the end and return one aggregated chunk."""
        out = GenerationChunk()
        async for c in self.generate(inp):
            out.text += c.text
            out.token_ids += c.token_ids
            out.logprobs += c.logprobs
            out.finish_reason, out.usage, out.tool_calls = c.finish_reason, c.usage, c.tool_calls
            out.incomplete = c.incomplete
        return out

    # ------------------------------------------------------------------------------ score / embed
    def _ids(self, x: str | list[int], what: str, bos: bool = False) -> list[int]:
        ids = self.tokenize(x, add_special=bos and self.add_bos) if isinstance(x, str) else list(x)
        if not ids:
            raise InvalidRequest(f"{what} is empty; it needs at least one token")
        V = self.model.config.vocab_size
        if any(not (isinstance(t, int) and 0 <= t < V) for t in ids):
            raise InvalidRequest(f"{what} has token ids outside the vocabulary [0, {V})")
        return ids

    async def score(
        self, context: str | list[int], continuations: Sequence[str | list[int]], adapter: str | None = None
    ) -> list[dict[str, Any]]:
        """Log-likelihood of each continuation given ``context``: ``{"logprob", "num_tokens", "is_greedy",
        "token_logprobs"}`` per continuation (context and continuation tokenized separately)."""
        return (await self.score_with_usage(context, continuations, adapter))[0]

    async def score_with_usage(
        self, context: str | list[int], continuations: Sequence[str | list[int]], adapter: str | None = None
    ) -> tuple[list[dict[str, Any]], Usage]:
        """``score`` plus its ``Usage``: prompt_tokens = context + all continuation tokens, queue and
        prefill (forward) times.

        Raises:
            InvalidRequest: empty / out-of-vocabulary / too long inputs. NotFound: unknown ``adapter``.
        """
        if not continuations:
            raise InvalidRequest("continuations is empty; give at least one")
        self._require_adapter(adapter)
        ctx = self._ids(context, "context", bos=True)
        conts = [self._ids(c, f"continuation {i}") for i, c in enumerate(continuations)]
        longest = len(ctx) + max(len(c) for c in conts)
        if longest > self.engine.max_len:
            raise InvalidRequest(
                f"context + continuation has {longest} tokens; the limit is {self.engine.max_len}"
            )
        bs = self.engine.table.capacity
        results, usage = await self._exclusive(
            adapter, lambda route: score_rows(self.model, ctx, conts, bs, before_forward=route)
        )
        usage.prompt_tokens = len(ctx) + sum(map(len, conts))
        return results, usage

    async def embed(
        self, texts_or_ids: Sequence[str | list[int]], normalize: bool = True, adapter: str | None = None
    ) -> list[list[float]]:
        """One vector per input: the mean over its tokens of the final hidden state after the final norm
        (``d_model`` floats), L2-normalised unless ``normalize=False``."""
        return (await self.embed_with_usage(texts_or_ids, normalize, adapter))[0]

    async def embed_with_usage(
        self, texts_or_ids: Sequence[str | list[int]], normalize: bool = True, adapter: str | None = None
    ) -> tuple[list[list[float]], Usage]:
        """``embed`` plus its ``Usage`` (prompt_tokens = all input tokens, queue and prefill times).

        Raises:
            InvalidRequest: empty / out-of-vocabulary / too long inputs. NotFound: unknown ``adapter``.
        """
        if not texts_or_ids:
            raise InvalidRequest("inputs is empty; give at least one text or token list")
        self._require_adapter(adapter)
        rows = [self._ids(x, f"input {i}", bos=True) for i, x in enumerate(texts_or_ids)]
        longest = max(len(r) for r in rows)
        if longest > self.engine.max_len:
            raise InvalidRequest(f"an input has {longest} tokens; the limit is {self.engine.max_len}")
        bs = self.engine.table.capacity
        vectors, usage = await self._exclusive(
            adapter, lambda route: embed_rows(self.model, rows, normalize, bs, before_forward=route)
        )
        usage.prompt_tokens = sum(map(len, rows))
        return vectors, usage

    def _require_adapter(self, adapter: str | None) -> None:
        if adapter and adapter not in self.adapters:
            loaded = ", ".join(self.adapters.names()) or "none"
            raise NotFound(f"unknown adapter {adapter!r}; loaded adapters: {loaded}")

    async def _exclusive(
        self, adapter: str | None, fn: Callable[[Callable[[int], None] | None], T]
    ) -> tuple[T, Usage]:
        """Run ``fn(route)`` on the engine thread with every forward's rows routed to ``adapter``; returns
        its result and a ``Usage`` with the queue (wait for the thread) and prefill (run) times."""
        submitted = time.perf_counter()
        span: list[float] = []

        def job() -> T:
            span.append(time.perf_counter())
            self._require_adapter(adapter)  # it may have been unloaded while this job was queued
            route = (lambda n: self.adapters.route([adapter] * n)) if adapter else None
            try:
                return fn(route)
            finally:
                if adapter:
                    self.adapters.route(None)
                span.append(time.perf_counter())

        if adapter:
            self._adapter_users[adapter] = self._adapter_users.get(adapter, 0) + 1
        try:
            result = await self.aengine.run(job)
        finally:
            if adapter:
                self._adapter_users[adapter] -= 1
        started, ended = span
        usage = Usage(queue_ms=(started - submitted) * 1e3, prefill_ms=(ended - started) * 1e3)
        usage.total_ms = (ended - submitted) * 1e3
        return result, usage

    # ----------------------------------------------------------------------------- adapters / info
    def list_adapters(self) -> list[dict[str, Any]]:
        """Loaded LoRA adapters: dicts with AdapterInfo's fields (name, path, rank, alpha, ...)."""
        return [dict(self.adapters.infos[n]) for n in self.adapters.names()]

    def _add_adapter(self, name: str, path: str | Path, replace: bool) -> dict[str, Any]:
        try:
            return self.engine.run_exclusive(lambda: self.adapters.add(name, path, replace=replace)).result()
        except (OSError, ValueError) as e:
            raise InvalidRequest(f"cannot load adapter {name!r} from {str(path)!r}: {e}") from None

    async def load_adapter(self, name: str, path: str | Path, replace: bool = False) -> dict[str, Any]:
        """Load a PEFT LoRA adapter directory as ``name`` (between engine iterations); returns its info.

        Raises:
            InvalidRequest: taken name (without ``replace``), missing files, or an adapter that does not fit.
        """
        if replace and self._adapter_users.get(name):
            raise InvalidRequest(f"adapter {name!r} is in use by {self._adapter_users[name]} request(s)")
        return await asyncio.to_thread(self._add_adapter, name, path, replace)

    async def unload_adapter(self, name: str) -> dict[str, Any]:
        """Unload adapter ``name``; returns its info.

        Raises:
            NotFound: no such adapter. InvalidRequest: requests using it are still running.
        """
        if name not in self.adapters:
            loaded = ", ".join(self.adapters.names()) or "none"
            raise NotFound(f"unknown adapter {name!r}; loaded adapters: {loaded}")
        if self._adapter_users.get(name):
            raise InvalidRequest(
                f"adapter {name!r} is in use by {self._adapter_users[name]} request(s); unload it when they end"
            )
        return await self.aengine.run(lambda: self.adapters.remove(name))

    def model_info(self) -> dict[str, Any]:
        """Name, sizes and limits of the served model."""
        c = self.model.config
        p = self.model.tok_emb.weight
        return {
            "name": self.name,
            "vocab_size": c.vocab_size,
            "max_seq_len": self.engine.max_len,
            "n_layer": c.n_layer,
            "d_model": c.d_model,
            "attention": sorted(c.attention_kinds()),
            "parameters": self.model.num_parameters(),
            "dtype": str(p.dtype).removeprefix("torch."),
            "device": str(p.device),
            "max_batch_size": self.engine.table.capacity,
            "tokenizer": type(self.tokenizer).__name__,
            "adapters": self.list_adapters(),
        }

    def metrics(self) -> dict[str, float]:
        """Engine metrics (see ``Engine.metrics``)."""
        return self.engine.metrics()

    async def shutdown(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking requests (Unavailable); with ``drain`` finish running ones first."""
        await self.aengine.shutdown(drain, timeout)


def _usage(stats: RequestStats | None, completion_tokens: int) -> Usage:
    if stats is None:
        return Usage(completion_tokens=completion_tokens)
    stats = dataclasses.replace(stats)  # the engine may still be updating its own copy
    if not stats.finished:
        stats.finished = time.monotonic()
    usage = stats.usage()
    usage.completion_tokens = completion_tokens
    return usage
