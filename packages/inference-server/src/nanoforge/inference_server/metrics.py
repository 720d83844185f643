"""Prometheus metrics of the inference servers, served as text on the HTTP server's ``/metrics``.

What it does: one ``ServerMetrics`` per server process with its own registry (so several servers in one
test process never clash). Request counters by API, method and status; latency, time-to-first-token and
token counters; and, at each scrape, every numeric value of ``ServingModel.metrics()`` as a gauge
``nanoforge_engine_<key>`` (queue depth, running requests, batch size, tokens/s, prefix-cache hit rate...).

What it deliberately does not do: push metrics anywhere, or time anything itself: callers report what
happened (``observe_request``, ``observe_usage``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nanoforge.inference_server.types import Usage

_log = logging.getLogger("nanoforge.inference_server.metrics")

#: Latency buckets in seconds: 5 ms .. 2 min (CPU decoding is slow; GPU first tokens are fast).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _EngineCollector(Collector):
    """Reads ``ServingModel.metrics()`` at scrape time and exposes each numeric entry as a gauge."""

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            values = dict(self._source())
        except Exception:  # a scrape must never take the server down
            _log.exception("ServingModel.metrics() failed during a scrape")
            return
        for key, value in sorted(values.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            name = "nanoforge_engine_" + "".join(c if c.isalnum() else "_" for c in key)
            yield GaugeMetricFamily(name, f"ServingModel.metrics()[{key!r}]", value=float(value))


class ServerMetrics:
    """The metrics of one server process.

    Args:
        engine_metrics: called at each scrape; returns the engine's live numbers (``ServingModel.metrics``).
    """

    def __init__(self, engine_metrics: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nanoforge_requests",
            "Finished requests by API (grpc/http), method and status (gRPC code name or HTTP status).",
            ["api", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nanoforge_request_seconds",
            "Wall time of a request from arrival to its last reply byte (streams: the last event), in seconds.",
            ["api", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "nanoforge_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first token, in seconds.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "nanoforge_prompt_tokens",
            "Prompt tokens processed (cached ones included).",
            registry=self.registry,
        )
        self.cached_prompt_tokens = Counter(
            "nanoforge_cached_prompt_tokens",
            "Prompt tokens served from the prefix cache.",
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "nanoforge_completion_tokens", "Tokens generated.", registry=self.registry
        )
        if engine_metrics is not None:
            self.registry.register(_EngineCollector(engine_metrics))

    def observe_request(self, api: str, method: str, status: str, seconds: float) -> None:
        """Count one finished request (any outcome) and its wall time."""
        self.requests.labels(api=api, method=method, status=status).inc()
        self.latency.labels(api=api, method=method).observe(max(0.0, seconds))

    def observe_usage(self, usage: Usage | None) -> None:
        """Add a finished generation's token counts and time to first token."""
        if usage is None:
            return
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.cached_prompt_tokens.inc(usage.cached_prompt_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        if usage.completion_tokens > 0 and usage.ttft_ms > 0:
            self.ttft.observe(usage.ttft_ms / 1000.0)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
