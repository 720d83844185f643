"""RecommenderService over real gRPC on loopback: the four RPCs, fallbacks, unknown items, errors, auth."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nanoforge.api.client import make_sync_channel
from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.recommender.v1 import recommender_pb2 as pb
from nanoforge.api.recommender.v1 import recommender_pb2_grpc as pb_grpc
from nanoforge.recommender.events import Event, sequences
from nanoforge.recommender.scoring import ServedModel
from nanoforge.recommender.service import SERVICE_NAME, start_server
from nanoforge.recommender.simulator import SimConfig, simulate


@contextmanager
def serving(run: Path, **kw) -> Iterator[tuple[str, ServedModel]]:
    """Start the service on a free loopback port in a background event loop; yield (address, model)."""
    model = ServedModel.load(run)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(start_server([model], port=0, **kw), loop).result(30)
    try:
        yield f"127.0.0.1:{running.port}", model
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(grace=1.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def svc(rec_run: Path) -> Iterator[tuple[pb_grpc.RecommenderServiceStub, ServedModel]]:
    with serving(rec_run) as (addr, model):
        channel = make_sync_channel(addr)
        yield pb_grpc.RecommenderServiceStub(channel), model
        channel.close()


@pytest.fixture(scope="module")
def users() -> dict[str, list[Event]]:
    return sequences(simulate(SimConfig(n_users=30, seed=123))[0])  # users the model never saw


def to_proto(events: list[Event]) -> list[pb.Event]:
    out = []
    for e in events:
        msg = pb.Event(item_id=e.item, event_type=e.event)
        msg.time.FromNanoseconds(int(e.timestamp * 1e9))
        out.append(msg)
    return out


def test_rec_recommend_filters_and_usage(svc, users) -> None:
    stub, model = svc
    history = next(iter(users.values()))[:20]
    reply = stub.Recommend(pb.RecommendRequest(history=to_proto(history), top_k=5, exclude_seen=True))
    items = [r.item_id for r in reply.recommendations]
    probs = [r.probability for r in reply.recommendations]
    assert len(items) == 5 and [r.rank for r in reply.recommendations] == [1, 2, 3, 4, 5]
    assert probs == sorted(probs, reverse=True) and 0 < probs[-1] <= probs[0] < 1
    assert not set(items) & {e.item for e in history}
    assert reply.model == "simrec" and not reply.popularity_fallback
    assert reply.usage.prompt_tokens == 20
    # exclusions and the allow-list
    reply2 = stub.Recommend(
        pb.RecommendRequest(history=to_proto(history), top_k=5, exclude_item_ids=items[:2])
    )
    assert not set(items[:2]) & {r.item_id for r in reply2.recommendations}
    allowed = list(model.vocab.items[-3:])
    reply3 = stub.Recommend(
        pb.RecommendRequest(history=to_proto(history), top_k=10, include_item_ids=allowed)
    )
    assert {r.item_id for r in reply3.recommendations} == set(allowed)
    # event_type: P(item) x P(type), same order
    reply4 = stub.Recommend(pb.RecommendRequest(history=to_proto(history), top_k=5, exclude_seen=True,
                                                event_type="click"))  # fmt: skip
    assert [r.item_id for r in reply4.recommendations] == items
    assert all(r4.probability < r.probability for r, r4 in zip(reply.recommendations, reply4.recommendations))


def test_rec_score_candidates_matches_recommend(svc, users) -> None:
    stub, model = svc
    history = to_proto(list(users.values())[1][:15])
    rec = stub.Recommend(pb.RecommendRequest(history=history, top_k=8))
    wanted = [*[r.item_id for r in rec.recommendations][::-1], "never-seen-item"]
    reply = stub.ScoreCandidates(pb.ScoreCandidatesRequest(history=history, candidate_item_ids=wanted))
    assert [s.item_id for s in reply.scores] == wanted  # request order
    by_item = {s.item_id: s for s in reply.scores}
    for r in rec.recommendations:
        assert math.exp(by_item[r.item_id].logprob) == pytest.approx(r.probability, rel=1e-4)
        assert by_item[r.item_id].known_item
    ranks = sorted(reply.scores, key=lambda s: s.rank)
    assert [s.item_id for s in ranks][:8] == [r.item_id for r in rec.recommendations]
    unknown = by_item["never-seen-item"]
    assert not unknown.known_item and unknown.logprob <= 0  # its hashed bucket's value, not an error
    bucket = model.vocab.bucket("never-seen-item")
    assert unknown.logprob == pytest.approx(
        float(model.encode(list(users.values())[1][:15]).item_logprobs[bucket])
    )


def test_rec_empty_history_falls_back_to_popularity(svc) -> None:
    stub, model = svc
    reply = stub.Recommend(pb.RecommendRequest(top_k=4))
    assert reply.popularity_fallback and reply.usage.prompt_tokens == 0
    assert [r.item_id for r in reply.recommendations] == list(model.vocab.items[:4])
    total = sum(model.vocab.counts)
    assert [r.probability for r in reply.recommendations] == pytest.approx(
        [c / total for c in model.vocab.counts[:4]], rel=1e-5
    )
    scored = stub.ScoreCandidates(pb.ScoreCandidatesRequest(candidate_item_ids=list(model.vocab.items[:2])))
    assert scored.popularity_fallback
    assert math.exp(scored.scores[0].logprob) == pytest.approx(model.vocab.counts[0] / total, rel=1e-5)


def test_rec_unknown_items_are_read_as_unseen(svc, users) -> None:
    stub, _ = svc
    history = to_proto(list(users.values())[2][:10])
    history.insert(3, pb.Event(item_id="brand-new-sku", event_type="view", time=history[2].time))
    reply = stub.Recommend(pb.RecommendRequest(history=history, top_k=3))
    assert len(reply.recommendations) == 3 and list(reply.unknown_item_ids) == ["brand-new-sku"]
    assert "brand-new-sku" not in {r.item_id for r in reply.recommendations}
    conv = stub.PredictConversion(pb.PredictConversionRequest(history=history))
    assert list(conv.unknown_item_ids) == ["brand-new-sku"]


def test_rec_predict_conversion_heads(svc, users) -> None:
    stub, model = svc
    # the simulator's rule: a cart is always followed by its purchase; the type head must have learnt it
    events = list(users.values())
    after_cart = [e[: i + 1] for e in events for i, x in enumerate(e) if x.event == "cart"][:5]
    after_view = [e[: i + 1] for e in events for i, x in enumerate(e) if x.event == "view" and i > 3][:5]
    p_cart = [stub.PredictConversion(pb.PredictConversionRequest(history=to_proto(h))) for h in after_cart]
    p_view = [stub.PredictConversion(pb.PredictConversionRequest(history=to_proto(h))) for h in after_view]
    assert all(r.method == "next_type_head" and r.horizon_events == 1 for r in p_cart)
    assert min(r.probability for r in p_cart) > 0.8 > 0.2 > max(r.probability for r in p_view)
    r = stub.PredictConversion(pb.PredictConversionRequest(history=to_proto(after_cart[0]), horizon_events=2))
    assert r.method == "conversion_head" and r.probability == pytest.approx(
        model.encode(after_cart[0]).conversion
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.PredictConversion(pb.PredictConversionRequest(history=to_proto(after_cart[0]), horizon_events=7))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "accepted: 1 or 2" in err.value.details()


def test_rec_explain_leave_one_out(svc, users) -> None:
    stub, _ = svc
    # weights are score changes: check them against ScoreCandidates on the shortened histories
    history = list(users.values())[3][:12]
    target = history[-1].item
    reply = stub.Explain(pb.ExplainRequest(history=to_proto(history), item_id=target))
    assert reply.method == "leave_one_out" and not reply.text
    assert sorted(a.history_index for a in reply.attributions) == list(range(12))
    weights = [a.weight for a in reply.attributions]
    assert weights == sorted(weights, reverse=True)

    def logp(events: list[Event]) -> float:
        req = pb.ScoreCandidatesRequest(history=to_proto(events), candidate_item_ids=[target])
        return stub.ScoreCandidates(req).scores[0].logprob

    full = logp(history)
    assert math.exp(full) == pytest.approx(reply.probability, rel=1e-4)
    for a in reply.attributions[:3] + reply.attributions[-2:]:
        rest = history[: a.history_index] + history[a.history_index + 1 :]
        assert full - logp(rest) == pytest.approx(a.weight, abs=1e-4)
    # a real property of the trained model: after "view X" the next item is often X (click X), and the
    # event that supports X most is that view itself
    cases = [e[: i + 1] for e in users.values() for i, x in enumerate(e) if x.event == "view" and i >= 3][:40]
    top_is_last = 0
    for h in cases:
        r = stub.Explain(pb.ExplainRequest(history=to_proto(h), item_id=h[-1].item))
        top_is_last += r.attributions[0].history_index == len(h) - 1
    assert top_is_last >= 0.8 * len(cases), (top_is_last, len(cases))


def test_rec_errors_are_clear_status_codes(svc, users) -> None:
    stub, _ = svc
    history = to_proto(next(iter(users.values()))[:5])

    def code_of(call, request) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as err:
            call(request)
        return err.value.code(), err.value.details()

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.Recommend, pb.RecommendRequest(history=history, top_k=1001)) == (
        invalid, "top_k must be in [1, 1000] (0: 10), got 1001")  # fmt: skip
    code, msg = code_of(stub.Recommend, pb.RecommendRequest(history=history, model="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in msg and "simrec" in msg
    bad = pb.Event(item_id="x", event_type="like")
    code, msg = code_of(stub.Recommend, pb.RecommendRequest(history=[bad]))
    assert code == invalid and "history[0].event_type 'like' is unknown" in msg
    late, early = pb.Event(item_id="a"), pb.Event(item_id="b")
    late.time.FromSeconds(100)
    early.time.FromSeconds(50)
    code, msg = code_of(stub.Recommend, pb.RecommendRequest(history=[late, early]))
    assert code == invalid and "oldest first" in msg
    assert code_of(stub.ScoreCandidates, pb.ScoreCandidatesRequest(history=history))[0] == invalid
    assert code_of(stub.PredictConversion, pb.PredictConversionRequest())[0] == invalid
    assert code_of(stub.Explain, pb.ExplainRequest(item_id="i001"))[0] == invalid
    code, msg = code_of(stub.Explain, pb.ExplainRequest(history=history, item_id="i001", generate_text=True))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "--inference" in msg


def test_rec_auth_health_and_reflection(rec_run) -> None:
    with serving(rec_run, token="s3cret") as (addr, _):
        request = pb.RecommendRequest(top_k=2)
        with make_sync_channel(addr) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.RecommenderServiceStub(channel).Recommend(request)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        with make_sync_channel(addr, token="wrong") as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.RecommenderServiceStub(channel).Recommend(request)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with make_sync_channel(addr, token="s3cret") as channel:
            assert len(pb_grpc.RecommenderServiceStub(channel).Recommend(request).recommendations) == 2
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            reply = next(
                stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            )
            names = {s.name for s in reply.list_services_response.service}
            assert SERVICE_NAME in names


@pytest.mark.integration
def test_rec_explain_with_generated_text(rec_run, inference_addr) -> None:
    history = next(iter(sequences(simulate(SimConfig(n_users=1, seed=5))[0]).values()))[:8]
    with serving(rec_run, inference_target=inference_addr) as (addr, _), make_sync_channel(addr) as channel:
        req = pb.ExplainRequest(history=to_proto(history), item_id=history[-1].item, generate_text=True,
                                sampling=common_pb2.SamplingParams(temperature=0.0, max_new_tokens=12))  # fmt: skip
        reply = pb_grpc.RecommenderServiceStub(channel).Explain(req)
    assert len(reply.attributions) == 8
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 8  # the LM's prompt counted too
    assert isinstance(reply.text, str)


def test_rec_cli_serve_rejects_bad_options(tmp_path, rec_run) -> None:
    from click.testing import CliRunner

    from nanoforge.recommender.cli import group

    runner = CliRunner()
    (tmp_path / "token").write_text("two words\n")
    r = runner.invoke(group, ["serve", "--run", str(rec_run), "--auth-token-file", str(tmp_path / "token")])
    assert r.exit_code == 1 and "the file must hold one token without spaces" in r.output
    r = runner.invoke(group, ["serve", "--run", str(rec_run), "--tls-cert", "c.pem"])
    assert r.exit_code == 1 and "--tls-cert and --tls-key go together" in r.output
    r = runner.invoke(group, ["serve", "--run", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "cannot read a recommender model config" in str(r.exception)
