"""Systems under test ("backends"): one small async adapter per API, built from a ``KIND:TARGET`` spec.

Registry :data:`BACKENDS`:

- ``grpc:HOST:PORT``  nanoforge's InferenceService (``AsyncInferenceClient``): generate, score; TTFT and
  compute time come from the reply's ``Usage`` block (queue + prefill, prefill + decode).
- ``openai:BASE_URL`` any OpenAI-compatible endpoint through the official ``openai`` client (completions,
  or chat completions when the task sets ``chat``); nanoforge's ``usage.timing_ms`` extension is read
  when present, otherwise TTFT is the client-observed latency of the non-streamed reply.
- ``anthropic:BASE_URL`` Anthropic's Messages API through the official ``anthropic`` SDK (``base_url`` lets
  tests point it at a loopback stub); the key comes from ``ANTHROPIC_API_KEY`` (a dummy is used if unset).
- ``retriever:HOST:PORT`` / ``recommender:HOST:PORT`` the RetrieverService / RecommenderService
  (``services.py``), for retrieval, rag and ranking tasks.
- ``local:MODEL_DIR`` a local model: starts ``nanoforge serve --model MODEL_DIR --port 0 --no-http`` as a
  SUBPROCESS (so this package never imports the server or torch), then talks gRPC to it; the child's
  measured CPU seconds (``/proc``) are what the cost table prices.

SDK-level retries are switched off: the harness retries transient errors itself (``is_transient``).

What it deliberately does not do: tool calling, streaming into the report, or load balancing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from nanoforge.api.inference_client import AsyncInferenceClient
from nanoforge.evaluation.services import RecommenderBackend, RetrieverBackend


@dataclass
class Reply:
    """One generation and what it cost. Times are milliseconds; None means the backend did not say."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    compute_ms: float | None = None
    model: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreReply:
    """``(logprob, num_tokens)`` per continuation, plus usage."""

    scores: list[tuple[float, int]]
    prompt_tokens: int = 0
    latency_ms: float = 0.0
    compute_ms: float | None = None


class UnsupportedError(ValueError):
    """The backend cannot do this operation at all (e.g. log-likelihood scoring over the Messages API)."""


class Backend(Protocol):
    """What the harness needs from a system under test."""

    kind: str
    target: str
    model: str

    async def start(self) -> None: ...

    async def generate(
        self, prompt: str, params: Mapping[str, Any], *, chat: bool, response_format: Mapping[str, Any] | None
    ) -> Reply: ...

    async def score(self, context: str, continuations: Sequence[str]) -> ScoreReply: ...

    def is_transient(self, exc: BaseException) -> bool: ...

    def format_unsupported(self, exc: BaseException) -> bool: ...

    def cpu_seconds(self) -> float | None: ...

    async def aclose(self) -> None: ...


_TRANSIENT_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
}


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class GrpcBackend:
    """nanoforge InferenceService over gRPC."""

    kind = "grpc"

    def __init__(
        self, target: str, *, model: str = "", token: str | None = None, timeout: float = 120.0
    ) -> None:
        self.target, self.model = target, model
        self.client = AsyncInferenceClient(target, token=token, timeout=timeout)

    async def start(self) -> None:
        """Nothing to resolve before the first call."""

    async def generate(
        self, prompt: str, params: Mapping[str, Any], *, chat: bool, response_format: Mapping[str, Any] | None
    ) -> Reply:
        t0 = time.perf_counter()
        content: Any = [{"role": "user", "content": prompt}] if chat else prompt
        reply = await self.client.generate(
            content, model=self.model, response_format=response_format, **params
        )
        u = reply.usage
        return Reply(
            text=reply.completions[0].text,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            ttft_ms=u.queue_time_ms + u.prefill_time_ms,
            latency_ms=_ms_since(t0),
            compute_ms=u.prefill_time_ms + u.decode_time_ms,
            model=reply.model,
        )

    async def score(self, context: str, continuations: Sequence[str]) -> ScoreReply:
        t0 = time.perf_counter()
        reply = await self.client.score(context, list(continuations), model=self.model)
        u = reply.usage
        return ScoreReply(
            [(s.logprob, s.num_tokens) for s in reply.scores],
            prompt_tokens=u.prompt_tokens,
            latency_ms=_ms_since(t0),
            compute_ms=u.prefill_time_ms + u.decode_time_ms,
        )

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _TRANSIENT_GRPC

    def format_unsupported(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, grpc.aio.AioRpcError)
            and exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "response_format" in (exc.details() or "")
        )

    def cpu_seconds(self) -> float | None:
        return None

    async def aclose(self) -> None:
        await self.client.close()


class OpenAIBackend:
    """Any OpenAI-compatible HTTP endpoint via the official ``openai`` client."""

    kind = "openai"

    def __init__(
        self, target: str, *, model: str = "", token: str | None = None, timeout: float = 120.0
    ) -> None:
        import openai

        self._openai = openai
        self.target, self.model = target, model
        key = token or os.environ.get("OPENAI_API_KEY") or "unused"
        self.client = openai.AsyncOpenAI(base_url=target, api_key=key, max_retries=0, timeout=timeout)

    async def generate(
        self, prompt: str, params: Mapping[str, Any], *, chat: bool, response_format: Mapping[str, Any] | None
    ) -> Reply:
        kw: dict[str, Any] = {"model": self.model, "max_tokens": params.get("max_new_tokens", 64)}
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("seed", "seed"),
            ("stop", "stop"),
        ):
            if params.get(ours) is not None:
                kw[theirs] = params[ours]
        if response_format is not None:
            import json

            kw["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": json.loads(response_format["json_schema"])},
            }
        t0 = time.perf_counter()
        if chat or response_format is not None:
            resp: Any = await self.client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **kw
            )
            text = resp.choices[0].message.content or ""
        else:
            kw.pop("response_format", None)
            resp = await self.client.completions.create(prompt=prompt, **kw)
            text = resp.choices[0].text
        latency = _ms_since(t0)
        usage = resp.usage
        timing = (getattr(usage, "model_extra", None) or {}).get("timing_ms") if usage else None
        return Reply(
            text=text,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            ttft_ms=(timing["queue"] + timing["prefill"]) if timing else latency,
            latency_ms=latency,
            compute_ms=(timing["prefill"] + timing["decode"]) if timing else None,
            model=resp.model,
        )

    async def start(self) -> None:
        """Without a model name, use the endpoint's first listed model (so cache keys name the real model)."""
        if not self.model:
            models = await self.client.models.list()
            if not models.data:
                raise ValueError(f"openai backend: {self.target} lists no models; pass --model")
            self.model = models.data[0].id

    async def score(self, context: str, continuations: Sequence[str]) -> ScoreReply:
        raise UnsupportedError(
            "the openai backend cannot score log-likelihoods; use the grpc or local backend"
        )

    def is_transient(self, exc: BaseException) -> bool:
        o = self._openai
        return isinstance(exc, o.APIConnectionError | o.RateLimitError | o.InternalServerError)

    def format_unsupported(self, exc: BaseException) -> bool:
        return isinstance(exc, self._openai.BadRequestError) and "response_format" in str(exc)

    def cpu_seconds(self) -> float | None:
        return None

    async def aclose(self) -> None:
        await self.client.close()


class AnthropicBackend:
    """Anthropic's Messages API via the official ``anthropic`` SDK (chat only, no scoring)."""

    kind = "anthropic"

    def __init__(
        self, target: str, *, model: str = "", token: str | None = None, timeout: float = 120.0
    ) -> None:
        import anthropic

        self._anthropic = anthropic
        self.target, self.model = target, model or "claude-3-5-haiku-latest"
        key = token or os.environ.get("ANTHROPIC_API_KEY") or "unused"
        self.client = anthropic.AsyncAnthropic(
            base_url=target or None, api_key=key, max_retries=0, timeout=timeout
        )

    async def start(self) -> None:
        """Nothing to resolve before the first call."""

    async def generate(
        self, prompt: str, params: Mapping[str, Any], *, chat: bool, response_format: Mapping[str, Any] | None
    ) -> Reply:
        kw: dict[str, Any] = {"model": self.model, "max_tokens": params.get("max_new_tokens", 64)}
        if params.get("temperature") is not None:
            # Sent as a raw body field: newer SDK versions no longer list `temperature` as an argument.
            kw["extra_body"] = {"temperature": params["temperature"]}
        if params.get("stop"):
            kw["stop_sequences"] = list(params["stop"])
        t0 = time.perf_counter()
        msg = await self.client.messages.create(messages=[{"role": "user", "content": prompt}], **kw)
        latency = _ms_since(t0)
        text = "".join(getattr(block, "text", "") for block in msg.content)
        notes = (
            {"response_format": "not sent: the Messages API has no response_format"}
            if response_format
            else {}
        )
        return Reply(
            text=text,
            prompt_tokens=msg.usage.input_tokens,
            completion_tokens=msg.usage.output_tokens,
            ttft_ms=latency,
            latency_ms=latency,
            model=msg.model,
            notes=notes,
        )

    async def score(self, context: str, continuations: Sequence[str]) -> ScoreReply:
        raise UnsupportedError(
            "the anthropic backend cannot score log-likelihoods; use the grpc or local backend"
        )

    def is_transient(self, exc: BaseException) -> bool:
        a = self._anthropic
        return isinstance(exc, a.APIConnectionError | a.RateLimitError | a.InternalServerError)

    def format_unsupported(self, exc: BaseException) -> bool:
        return False

    def cpu_seconds(self) -> float | None:
        return None

    async def aclose(self) -> None:
        await self.client.close()


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process from ``/proc/PID/stat`` (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LocalBackend(GrpcBackend):
    """A model directory served by a child ``nanoforge serve`` process on a free loopback port (see ``start``)."""

    kind = "local"

    def __init__(
        self, target: str, *, model: str = "", token: str | None = None, timeout: float = 120.0
    ) -> None:
        if not Path(target, "config.json").is_file():
            raise ValueError(f"local backend: {target!r} is not a model directory (no config.json)")
        self.target, self.model, self._timeout = target, model, timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._cpu0 = 0.0

    async def start(self) -> None:
        """Start ``nanoforge serve --port 0 --no-http`` and connect once it prints its port."""
        fd, name = tempfile.mkstemp(prefix="nanoforge-eval-serve-", suffix=".log")
        self._log_path = Path(name)
        log = os.fdopen(fd, "wb")
        cmd = [
            sys.executable,
            "-m",
            "nanoforge.cli",
            "serve",
            "--model",
            self.target,
            "--port",
            "0",
            "--no-http",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        port = await self._wait_port(self.proc, timeout=120.0)
        self.client = AsyncInferenceClient(f"127.0.0.1:{port}", timeout=self._timeout)
        self._cpu0 = proc_cpu_seconds(self.proc.pid) or 0.0

    async def _wait_port(self, proc: subprocess.Popen[bytes], timeout: float) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self._log_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("grpc listening on "):
                    return int(line.rsplit(":", 1)[1])
            if proc.poll() is not None:
                raise OSError(f"local backend: nanoforge serve exited with {proc.returncode}: {text[-500:]}")
            await asyncio.sleep(0.1)
        proc.kill()
        raise OSError(f"local backend: nanoforge serve did not report a port within {timeout:g} s")

    def cpu_seconds(self) -> float | None:
        now = proc_cpu_seconds(self.proc.pid) if self.proc is not None else None
        return None if now is None else now - self._cpu0

    async def aclose(self) -> None:
        if self.proc is None:
            return
        if hasattr(self, "client"):
            await self.client.close()
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_path.unlink(missing_ok=True)
        self.proc = None


def grpc_embed_fn(
    target: str, *, model: str = "", token: str | None = None
) -> Callable[[Sequence[str]], Any]:
    """An embed function for similarity-selected few-shot examples that calls the Embed RPC.

    Returns ``embed(texts) -> np.ndarray`` of L2-normalised rows, shape (N, D). Blocking (few-shot selection
    happens before the run starts).
    """
    import numpy as np

    from nanoforge.api.inference_client import InferenceClient

    def embed(texts: Sequence[str]) -> Any:
        with InferenceClient(target, token=token) as client:
            reply = client.embed(list(texts), model=model, normalize=True)
        return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)  # (N, D)

    return embed


BACKENDS: dict[str, Callable[..., Backend]] = {
    "grpc": GrpcBackend,
    "openai": OpenAIBackend,
    "anthropic": AnthropicBackend,
    "local": LocalBackend,
    "retriever": RetrieverBackend,  # services.py: Search / Ask (retrieval and rag tasks)
    "recommender": RecommenderBackend,  # services.py: Recommend (ranking tasks)
}


def parse_spec(spec: str) -> tuple[str, str]:
    """``"grpc:127.0.0.1:50051"`` -> ``("grpc", "127.0.0.1:50051")``.

    Raises:
        ValueError: for a spec without a known ``KIND:`` prefix.
    """
    kind, sep, target = spec.partition(":")
    if not sep or kind not in BACKENDS or not target:
        raise ValueError(
            f"bad backend spec {spec!r}; expected KIND:TARGET with KIND in {', '.join(sorted(BACKENDS))}"
        )
    return kind, target


def build_backend(spec: str, *, model: str = "", token: str | None = None, timeout: float = 120.0) -> Backend:
    """Build the backend a ``KIND:TARGET`` spec names."""
    kind, target = parse_spec(spec)
    return BACKENDS[kind](target, model=model, token=token, timeout=timeout)
