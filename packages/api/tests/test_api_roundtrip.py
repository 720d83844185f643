"""Messages survive serialization: presence of optional fields, oneofs, maps, repeated and nested values."""

from __future__ import annotations

from google.protobuf import json_format

from nanoforge.api.common.v1 import common_pb2 as c
from nanoforge.api.inference.v1 import inference_pb2 as inf
from nanoforge.api.recommender.v1 import recommender_pb2 as rec
from nanoforge.api.retriever.v1 import retriever_pb2 as ret
from nanoforge.api.trainer.v1 import trainer_pb2 as tr


def _roundtrip(msg):
    data = msg.SerializeToString(deterministic=True)
    back = type(msg).FromString(data)
    assert back == msg
    assert back.SerializeToString(deterministic=True) == data
    return back


def test_api_optional_zero_is_distinct_from_unset() -> None:
    greedy = _roundtrip(c.SamplingParams(temperature=0.0, seed=0, max_new_tokens=5))
    assert greedy.HasField("temperature") and greedy.temperature == 0.0
    assert greedy.HasField("seed") and greedy.seed == 0
    assert not greedy.HasField("top_p") and not greedy.HasField("top_k")
    default = _roundtrip(c.SamplingParams())
    assert not default.HasField("temperature")
    assert default.SerializeToString() == b""  # unset means nothing on the wire


def test_api_generate_request_with_chat_prompt_roundtrips() -> None:
    req = inf.GenerateRequest(
        model="tiny",
        adapter="sql-lora",
        messages=c.ChatMessages(
            messages=[
                c.ChatMessage(role=c.ROLE_SYSTEM, content="Be brief."),
                c.ChatMessage(
                    role=c.ROLE_ASSISTANT,
                    tool_calls=[c.ToolCall(id="call_1", name="lookup", arguments_json='{"q": "x"}')],
                ),
                c.ChatMessage(role=c.ROLE_TOOL, content="42", tool_call_id="call_1"),
            ]
        ),
        sampling=c.SamplingParams(
            temperature=0.7, top_p=0.9, stop=["\n\n"], stop_token_ids=[0], logprobs=True
        ),
        response_format=c.ResponseFormat(choices=c.Choices(values=["yes", "no"])),
        tools=[c.ToolDefinition(name="lookup", parameters_json_schema='{"type": "object"}')],
        n=2,
    )
    back = _roundtrip(req)
    assert back.WhichOneof("prompt") == "messages"
    assert back.messages.messages[1].tool_calls[0].name == "lookup"
    assert back.response_format.WhichOneof("format") == "choices"
    # the stream request is wire compatible: the same bytes parse into the same fields
    as_stream = inf.GenerateStreamRequest.FromString(req.SerializeToString())
    assert as_stream.messages == req.messages and as_stream.n == 2 and as_stream.sampling == req.sampling


def test_api_oneof_setting_one_member_clears_the_other() -> None:
    req = inf.GenerateRequest(text="hello")
    req.token_ids.ids.extend([1, 2, 3])
    assert req.WhichOneof("prompt") == "token_ids"
    assert req.text == ""
    assert list(_roundtrip(req).token_ids.ids) == [1, 2, 3]


def test_api_responses_with_usage_and_logprobs_roundtrip() -> None:
    usage = c.Usage(prompt_tokens=7, completion_tokens=3, queue_time_ms=0.25, total_time_ms=12.5)
    reply = inf.GenerateResponse(
        completions=[
            inf.Completion(
                index=0,
                text="abc",
                token_ids=[5, 6, 7],
                finish_reason=c.FINISH_REASON_STOP_SEQUENCE,
                matched_stop="\n",
                logprobs=[
                    c.TokenLogprob(
                        token_id=5,
                        text="a",
                        logprob=-0.5,
                        top_logprobs=[c.LogprobCandidate(token_id=9, logprob=-1)],
                    )
                ],
            )
        ],
        usage=usage,
        model="tiny",
        request_id="r1",
    )
    back = _roundtrip(reply)
    assert back.usage.total_time_ms == 12.5
    assert back.completions[0].logprobs[0].top_logprobs[0].token_id == 9
    score = _roundtrip(
        inf.ScoreResponse(
            scores=[inf.ContinuationScore(logprob=-3.25, num_tokens=2, is_greedy=True)], usage=usage
        )
    )
    assert score.scores[0].logprob == -3.25


def test_api_retriever_messages_with_maps_and_filters_roundtrip() -> None:
    req = ret.AskRequest(
        collection="docs",
        question="What is asyncio?",
        retrieval=ret.SearchOptions(
            mode=ret.SEARCH_MODE_HYBRID,
            top_k=4,
            hybrid_alpha=0.0,
            filters=[ret.MetadataFilter(key="lang", operator=ret.FILTER_OPERATOR_IN, values=["en", "fr"])],
        ),
        abstain_threshold=0.3,
        include_trace=True,
    )
    back = _roundtrip(req)
    assert back.retrieval.HasField("hybrid_alpha") and back.retrieval.hybrid_alpha == 0.0
    assert not back.retrieval.HasField("min_score")
    doc = _roundtrip(ret.Document(id="d1", text="t", metadata={"lang": "en", "kind": "howto"}))
    assert dict(doc.metadata) == {"lang": "en", "kind": "howto"}
    stream = ret.AskStreamRequest.FromString(req.SerializeToString())
    assert stream.retrieval == req.retrieval and stream.question == req.question


def test_api_recommender_and_trainer_messages_roundtrip() -> None:
    event = rec.Event(item_id="sku-1", event_type="view", value=19.99, attributes={"device": "mobile"})
    event.time.FromSeconds(1_700_000_000)
    back = _roundtrip(rec.RecommendRequest(user_id="u1", history=[event], top_k=3, exclude_seen=True))
    assert back.history[0].time.seconds == 1_700_000_000
    point = tr.MetricPoint(step=10, values={"train/loss": 2.5, "lr": 3e-4})
    watch = _roundtrip(tr.WatchJobResponse(metrics=point))
    assert watch.WhichOneof("event") == "metrics"
    assert watch.metrics.values["train/loss"] == 2.5
    ckpt = _roundtrip(tr.Checkpoint(path="/runs/a/step_10", step=10, val_loss=0.0))
    assert ckpt.HasField("val_loss")


def test_api_json_mapping_uses_enum_names() -> None:
    msg = c.ChatMessage(role=c.ROLE_USER, content="hi")
    as_json = json_format.MessageToDict(msg)
    assert as_json == {"role": "ROLE_USER", "content": "hi"}
    assert json_format.ParseDict(as_json, c.ChatMessage()) == msg
