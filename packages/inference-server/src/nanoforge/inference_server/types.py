"""Plain dataclasses shared by the engine, the text layer and the servers (the Python side of the protos).

What it does: ``SamplingOptions`` (validated per-request sampling knobs), ``GenerateInput`` (one request:
a prompt as text, token ids or chat messages), and what comes back: ``GenerationChunk`` deltas with
``TokenLogprob`` entries and a final ``Usage`` block.
What it does not do: convert to or from protobuf messages (``convert``) or run anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nanoforge.inference_server.errors import InvalidRequest

#: Values a finished request's ``finish_reason`` may take.
FINISH_REASONS = ("stop", "length", "cancelled", "tool_calls")

#: Most alternatives ``top_logprobs`` may ask for (OpenAI's limit).
MAX_TOP_LOGPROBS = 20


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class SamplingOptions:
    """Per-request sampling knobs (same order of application as ``core_model.generate``).

    Attributes:
        temperature: 0 = greedy argmax; > 0 divides the logits. Range [0, 100].
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest set of tokens whose probability reaches top_p; (0, 1], 1 = off.
        min_p: drop tokens below min_p * the top probability; [0, 1), 0 = off.
        repetition_penalty: CTRL penalty on tokens in the prompt or output; (0, 10], 1 = off.
        seed: seeds this request's own ``torch.Generator`` (None = random).
        max_new_tokens: most tokens generated; >= 1. Clipped to the context left after the prompt
            (finish_reason "length"), never an error.
        stop: strings that end the output; the stop string itself is trimmed (OpenAI semantics).
        stop_token_ids: token ids that end the output (the stop token is not part of the text).
        logprobs: return the log-probability of every generated token.
        top_logprobs: also return that many most likely alternatives per token; [0, 20].
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0

    def validate(self) -> SamplingOptions:
        """Check every field; returns self so it chains.

        Raises:
            InvalidRequest: naming the field, the bad value and the accepted range.
        """
        checks: list[tuple[str, bool, str]] = [
            ("temperature", _is_num(self.temperature) and 0 <= self.temperature <= 100, "[0, 100]"),
            ("top_k", _is_int(self.top_k) and self.top_k >= 0, "an int >= 0 (0 = off)"),
            ("top_p", _is_num(self.top_p) and 0 < self.top_p <= 1, "(0, 1] (1 = off)"),
            ("min_p", _is_num(self.min_p) and 0 <= self.min_p < 1, "[0, 1) (0 = off)"),
            (
                "repetition_penalty",
                _is_num(self.repetition_penalty) and 0 < self.repetition_penalty <= 10,
                "(0, 10] (1 = off)",
            ),
            (
                "seed",
                self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**63),
                "None or [0, 2^63)",
            ),
            ("max_new_tokens", _is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "an int >= 1"),
            (
                "stop",
                isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
                "a list of non-empty strings",
            ),
            (
                "stop_token_ids",
                isinstance(self.stop_token_ids, list)
                and all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
                "a list of token ids >= 0",
            ),
            ("logprobs", isinstance(self.logprobs, bool), "true or false"),
            (
                "top_logprobs",
                _is_int(self.top_logprobs) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
                f"an int in [0, {MAX_TOP_LOGPROBS}]",
            ),
        ]
        for name, ok, accepted in checks:
            if not ok:
                raise InvalidRequest(f"{name}={getattr(self, name)!r} is invalid; accepted: {accepted}")
        if len(self.stop) > 16:
            raise InvalidRequest(f"stop has {len(self.stop)} strings; accepted: at most 16")
        return self


@dataclass
class GenerateInput:
    """One generation request. Exactly one of ``prompt``, ``prompt_ids`` and ``messages`` is set.

    Attributes:
        prompt: raw text (encoded without special tokens).
        prompt_ids: token ids, used as they are.
        messages: chat messages ``[{"role": ..., "content": ...}]``, rendered with the tokenizer's chat
            template and a generation prompt.
        options: sampling knobs.
        adapter: name of a loaded LoRA adapter (None = the base model).
        response_format: structured output: ``{"type": "json_schema", "schema": {...}}`` | ``{"type":
            "json_object"}`` | ``{"type": "regex", "pattern": ...}`` | ``{"type": "choice", "choices": [...]}``.
        tools: OpenAI-shaped tool definitions passed to the chat template.
        tool_choice: "auto" | "none" | "required" | {"type": "function", "function": {"name": ...}}.
        deadline: a ``time.monotonic()`` time after which the request is abandoned (DeadlineExceeded).
        request_id: caller's id, echoed in logs and metrics.
    """

    prompt: str | None = None
    prompt_ids: list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    options: SamplingOptions = field(default_factory=SamplingOptions)
    adapter: str | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    deadline: float | None = None
    request_id: str = ""

    def validate(self) -> GenerateInput:
        """Check that exactly one prompt form is given and the options are valid; returns self.

        Raises:
            InvalidRequest: naming what is wrong.
        """
        given = [n for n in ("prompt", "prompt_ids", "messages") if getattr(self, n) is not None]
        if len(given) != 1:
            raise InvalidRequest(f"give exactly one of prompt, prompt_ids, messages; got {given or 'none'}")
        if self.prompt_ids is not None and not (
            isinstance(self.prompt_ids, list) and all(_is_int(t) and t >= 0 for t in self.prompt_ids)
        ):
            raise InvalidRequest("prompt_ids must be a list of token ids >= 0")
        if self.messages is not None and not (
            isinstance(self.messages, list)
            and self.messages
            and all(isinstance(m, dict) for m in self.messages)
        ):
            raise InvalidRequest("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        self.options.validate()
        return self


@dataclass
class Usage:
    """Token counts and timings of one request (milliseconds)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    ttft_ms: float = 0.0


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the ``top`` alternatives (id, text, logprob)."""

    token_id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class GenerationChunk:
    """A streamed delta. The last chunk of a request has ``finish_reason`` and ``usage`` set.

    Attributes:
        text: new text since the previous chunk (never a broken UTF-8 sequence).
        token_ids: new token ids since the previous chunk.
        logprobs: one entry per new token when the request asked for logprobs.
        finish_reason: None until the end, then "stop" | "length" | "cancelled" | "tool_calls".
        usage: set on the last chunk.
        tool_calls: set on the last chunk when tool calls were parsed (OpenAI shape).
        incomplete: set on the last chunk of a constrained request (response_format / forced tool call)
            that stopped before its structure was complete (finish_reason "length" or "cancelled").
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: list[dict[str, Any]] | None = None
    incomplete: bool = False
