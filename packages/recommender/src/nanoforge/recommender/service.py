"""RecommenderService over gRPC (port 50053): Recommend, PredictConversion, ScoreCandidates and Explain.

The servicer only converts protos to Python and back and calls ``ServedModel`` (``scoring``); errors are
exceptions that the shared ``ErrorMappingInterceptor`` (nanoforge.api.server) maps to status codes:
``ValueError`` -> INVALID_ARGUMENT (unknown event type, times out of order, top_k / candidates out of range,
a horizon the model cannot answer, an empty history where one is needed), ``KeyError`` -> NOT_FOUND
(unknown model name), ``NoInferenceService`` -> FAILED_PRECONDITION (Explain asked for text but the server
has no ``--inference``). Items the model does not know are never errors: they are read as unseen items
(hashed buckets) and listed in the reply's ``unknown_item_ids``. An empty history gets the most popular
items (Recommend) or popularity log-shares (ScoreCandidates), flagged with ``popularity_fallback``.
Model work runs in worker threads so the event loop keeps serving; health, reflection, bearer-token auth
and TLS come from ``nanoforge.api.server`` like every nanoforge service.

What it deliberately does not do: train, reload models while running, or import the inference server
(explanation text is generated through an InferenceService over gRPC, as a chat turn: the served language
model needs a chat template, as every ``nanoforge tokenizer train --chat-template`` model has).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import grpc
import grpc.aio
import torch

from nanoforge.api import server as srv
from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2
from nanoforge.api.inference_client import AsyncInferenceClient, chat_message
from nanoforge.api.recommender.v1 import recommender_pb2 as pb
from nanoforge.api.recommender.v1 import recommender_pb2_grpc as pb_grpc
from nanoforge.recommender.events import EVENT_TYPES, Event
from nanoforge.recommender.scoring import ServedModel

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name
DEFAULT_PORT = 50053
MAX_TOP_K = 1000
MAX_CANDIDATES = 10_000
MAX_HISTORY = 10_000  # events per request; only the model's window is read, the rest is validated
EXPLAIN_TOP_EVENTS = 3  # events named in the generated explanation's prompt


class NoInferenceService(RuntimeError):
    """Generated text was asked of a server started without an InferenceService address."""

    grpc_status = "FAILED_PRECONDITION"


def events_from_proto(history: Any, user: str) -> list[Event]:
    """Proto events -> ``Event`` list. An unset time repeats the previous event's (gap 0; 0 s at first).

    Raises:
        ValueError: too many events, an empty item, an unknown event type, or times out of order.
    """
    if len(history) > MAX_HISTORY:
        raise ValueError(f"history has {len(history)} events; at most {MAX_HISTORY} are accepted")
    out: list[Event] = []
    prev: float | None = None
    for i, e in enumerate(history):
        kind = e.event_type or "view"
        if kind not in EVENT_TYPES:
            raise ValueError(
                f"history[{i}].event_type {kind!r} is unknown; accepted: {', '.join(EVENT_TYPES)}"
            )
        if not e.item_id:
            raise ValueError(f"history[{i}].item_id is empty; every event needs an item")
        t = e.time.ToNanoseconds() / 1e9 if e.HasField("time") else (prev if prev is not None else 0.0)
        if prev is not None and t < prev:
            raise ValueError(
                f"history[{i}].time is earlier than history[{i - 1}].time; send events oldest first"
            )
        prev = t
        out.append(Event(user, t, kind, e.item_id, dict(e.attributes)))
    return out


def _usage(t0: float, prompt_tokens: int, completion_tokens: int = 0) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_time_ms=(time.perf_counter() - t0) * 1000,
    )


def explanation_prompt(
    history: list[Event], item: str, probability: float, top: list[tuple[int, float]]
) -> str:
    """The instruction for the generated explanation: the history, the item and its strongest events."""
    recent = "; ".join(f"{e.event} {e.item}" for e in history[-10:])
    drivers = "; ".join(f"{history[i].event} {history[i].item} (weight {w:+.2f})" for i, w in top)
    return (
        f"A shopper's latest events, oldest first: {recent}.\n"
        f"A recommender predicts the next item is {item} (probability {probability:.3f}).\n"
        f"The events that raised that prediction most: {drivers or 'none'}.\n"
        f"In one short paragraph, explain to the shopper why {item} is recommended."
    )


async def _read_history(
    m: ServedModel, history: list[Event], event_type: str
) -> tuple[torch.Tensor, float, int, list[str]]:
    """(item log-probs, log P(event_type), events read, unknown items) of ONE encoding of the history.

    An empty history gives popularity log-shares, 0 events, and ignores ``event_type`` (no model pass).
    """
    if event_type and event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event_type {event_type!r}; accepted: {', '.join(EVENT_TYPES)}")
    if not history:
        return m.popularity_logprobs(), 0.0, 0, []
    enc = await asyncio.to_thread(m.encode, history)  # worker thread: the event loop keeps serving
    return enc.item_logprobs, m.type_logprob(enc, event_type), enc.n_events, enc.unknown


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """Proto <-> ``ServedModel`` conversion for every RecommenderService RPC.

    Args:
        models: served models by name; ``default`` answers requests that leave ``model`` empty.
        inference: client of an InferenceService for Explain's text; None: generate_text is refused.
    """

    def __init__(
        self, models: dict[str, ServedModel], default: str, inference: AsyncInferenceClient | None = None
    ) -> None:
        if default not in models:
            raise ValueError(f"default model {default!r} is not among the served models {sorted(models)}")
        self.models, self.default, self.inference = models, default, inference

    def _model(self, name: str) -> ServedModel:
        try:
            return self.models[name or self.default]
        except KeyError:
            raise KeyError(
                f"unknown model {name!r}; this server serves: {', '.join(sorted(self.models))}"
            ) from None

    async def Recommend(self, request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        t0 = time.perf_counter()
        m = self._model(request.model)
        k = request.top_k or 10
        if not 1 <= k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in [1, {MAX_TOP_K}] (0: 10), got {request.top_k}")
        history = events_from_proto(request.history, request.user_id)
        logprobs, type_lp, n_events, unknown = await _read_history(m, history, request.event_type)
        ranked = m.top_k(
            logprobs,
            k,
            include=list(request.include_item_ids),
            exclude=list(request.exclude_item_ids),
            seen=history if request.exclude_seen else [],
        )
        recs = [
            pb.Recommendation(item_id=it, probability=math.exp(lp + type_lp), rank=r)
            for r, (it, lp) in enumerate(ranked, 1)
        ]
        return pb.RecommendResponse(
            recommendations=recs,
            model=m.name,
            usage=_usage(t0, n_events),
            popularity_fallback=not history,
            unknown_item_ids=unknown,
        )

    async def PredictConversion(
        self, request: pb.PredictConversionRequest, context: Any
    ) -> pb.PredictConversionResponse:
        t0 = time.perf_counter()
        m = self._model(request.model)
        history = events_from_proto(request.history, request.user_id)
        if not history:
            raise ValueError("history is empty; PredictConversion needs at least one event")
        horizon = request.horizon_events or 1
        enc = await asyncio.to_thread(m.encode, history)
        p, method = m.conversion_probability(enc, horizon, request.conversion_event_type, request.item_id)
        return pb.PredictConversionResponse(
            probability=p,
            model=m.name,
            usage=_usage(t0, enc.n_events),
            horizon_events=horizon,
            method=method,
            unknown_item_ids=enc.unknown,
        )

    async def ScoreCandidates(
        self, request: pb.ScoreCandidatesRequest, context: Any
    ) -> pb.ScoreCandidatesResponse:
        t0 = time.perf_counter()
        m = self._model(request.model)
        cands = list(request.candidate_item_ids)
        if not 1 <= len(cands) <= MAX_CANDIDATES:
            raise ValueError(f"candidate_item_ids must hold 1..{MAX_CANDIDATES} items, got {len(cands)}")
        history = events_from_proto(request.history, request.user_id)
        logprobs, type_lp, n_events, unknown = await _read_history(m, history, request.event_type)
        ids = torch.tensor([m.vocab.id(it) for it in cands])  # unknown items -> their hashed bucket
        values = (logprobs[ids] + type_lp).tolist()
        order = sorted(range(len(cands)), key=lambda i: -values[i])  # stable: ties keep request order
        rank = {i: r for r, i in enumerate(order, 1)}
        scores = [
            pb.CandidateScore(
                item_id=it, logprob=max(values[i], -1e30), rank=rank[i], known_item=m.vocab.is_known(it)
            )
            for i, it in enumerate(cands)
        ]
        return pb.ScoreCandidatesResponse(
            scores=scores,
            model=m.name,
            usage=_usage(t0, n_events),
            popularity_fallback=not history,
            unknown_item_ids=unknown,
        )

    async def Explain(self, request: pb.ExplainRequest, context: Any) -> pb.ExplainResponse:
        t0 = time.perf_counter()
        m = self._model(request.model)
        if not request.item_id:
            raise ValueError("item_id is empty; name the item to explain")
        history = events_from_proto(request.history, request.user_id)
        if not history:
            raise ValueError(
                "history is empty; Explain attributes a prediction to history events, send at least one"
            )
        if request.generate_text and self.inference is None:
            raise NoInferenceService(
                "generate_text needs an InferenceService; start the server with --inference"
            )
        logp, weights = await asyncio.to_thread(m.attributions, history, request.item_id)
        order = sorted(range(len(history)), key=lambda i: -weights[i])
        attributions = [
            pb.EventAttribution(history_index=i, item_id=history[i].item, weight=weights[i]) for i in order
        ]
        n_events = min(len(history), m.max_len)
        usage = _usage(t0, n_events)
        text = ""
        if request.generate_text and self.inference is not None:
            top = [(i, weights[i]) for i in order[:EXPLAIN_TOP_EVENTS] if weights[i] > 0]
            sampling = (
                request.sampling
                if request.HasField("sampling")
                else common_pb2.SamplingParams(temperature=0.0, max_new_tokens=128)
            )
            prompt = explanation_prompt(history, request.item_id, math.exp(logp), top)
            gen = inference_pb2.GenerateRequest(
                model=request.text_model,
                messages=common_pb2.ChatMessages(
                    messages=[chat_message({"role": "user", "content": prompt})]
                ),
                sampling=sampling,
            )
            remaining = context.time_remaining() if context is not None else None
            reply = await self.inference.stub.Generate(gen, timeout=remaining or self.inference.timeout)
            text = reply.completions[0].text.strip() if reply.completions else ""
            usage = _usage(t0, n_events + reply.usage.prompt_tokens, reply.usage.completion_tokens)
        return pb.ExplainResponse(
            attributions=attributions,
            probability=math.exp(logp),
            text=text,
            model=m.name,
            usage=usage,
            method="leave_one_out",
            unknown_item_ids=[e.item for e in history if not m.vocab.is_known(e.item)],
        )


class RunningServer:
    """A started RecommenderService: its port, and ``stop()`` for a graceful shutdown."""

    def __init__(
        self, server: grpc.aio.Server, health: Any, port: int, servicer: RecommenderServicer
    ) -> None:
        self.server, self.health, self.port, self.servicer = server, health, port, servicer

    async def stop(self, grace: float = 5.0) -> None:
        await srv.graceful_stop(self.server, self.health, grace)
        if self.servicer.inference is not None:
            await self.servicer.inference.close()


async def start_server(
    models: list[ServedModel],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    inference_target: str | None = None,
    inference_token: str | None = None,
    max_message_bytes: int = 16 << 20,
) -> RunningServer:
    """Build, bind and start the server (port 0: any free port; see ``RunningServer.port``).

    The first model is the default. ``inference_target`` (host:port) enables Explain's generated text.

    Raises:
        ValueError: no models, or two with the same name. OSError: the address cannot be bound.
    """
    if not models:
        raise ValueError("no models to serve; pass at least one --run")
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise ValueError(f"model names must be unique, got {[m.name for m in models]}")
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if token:
        interceptors.append(srv.BearerAuthInterceptor(token))
    interceptors.append(srv.ErrorMappingInterceptor())
    server = srv.create_server(interceptors, max_message_bytes=max_message_bytes)
    inference = AsyncInferenceClient(inference_target, token=inference_token) if inference_target else None
    servicer = RecommenderServicer(by_name, models[0].name, inference)
    pb_grpc.add_RecommenderServiceServicer_to_server(servicer, server)
    health = srv.add_health_and_reflection(server, [SERVICE_NAME])
    creds = srv.server_credentials(tls_cert, tls_key) if tls_cert and tls_key else None
    bound = srv.bind(server, host, port, creds)
    await server.start()
    await srv.mark_serving(health, [SERVICE_NAME])
    return RunningServer(server, health, bound, servicer)
