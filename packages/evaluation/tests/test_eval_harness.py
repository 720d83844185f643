"""The harness against a REAL ``nanoforge serve`` on loopback (gRPC and OpenAI HTTP), the Anthropic SDK
against a loopback stub, the local-subprocess backend, the cache, retries and per-record failures."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from nanoforge.evaluation.backends import build_backend, parse_spec
from nanoforge.evaluation.cache import ResponseCache
from nanoforge.evaluation.harness import RunOptions, build_report, run_system
from nanoforge.evaluation.report import write_report
from nanoforge.evaluation.task import load_task

QA = [
    {"id": "q1", "question": "what is two plus two", "answer": "four"},
    {"id": "q2", "question": "is the sky blue", "answer": "yes"},
    {"id": "q3", "question": "is fire cold", "answer": "no"},
    {"id": "q4", "question": "name a fast animal", "answer": "the quick brown fox"},
]


def _run(
    task_path: Path, spec: str, cache: ResponseCache | None = None, **opts: Any
) -> tuple[Any, list[Any]]:
    task = load_task(task_path)

    async def go() -> tuple[Any, list[Any]]:
        backend = build_backend(spec)
        try:
            return backend, await run_system(task, backend, cache=cache, opts=RunOptions(**opts))
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_generate_over_grpc_records_usage_metrics_and_cache(
    server: Any, write_task: Any, tmp_path: Path
) -> None:
    path = write_task(
        QA,
        id_field="id",
        template="Question: {{ question }}? Answer:",
        target_field="answer",
        metrics=["exact_match", "token_f1", "rouge_l", "bleu", "chrf"],
        sampling={"max_new_tokens": 6, "temperature": 0.0},
        fewshot={"k": 1, "mode": "similar", "query_field": "question"},
    )
    cache = ResponseCache(tmp_path / "cache.sqlite")
    backend, records = _run(path, f"grpc:{server.grpc_target}", cache, n_resamples=200)
    assert [r.id for r in records] == ["q1", "q2", "q3", "q4"]
    for r in records:
        assert r.error is None, r.error
        assert r.prompt.count("Question:") == 2  # one similar example + the record
        assert r.prompt_tokens > 5 and 1 <= r.completion_tokens <= 6
        assert r.ttft_ms is not None and 0 < r.ttft_ms <= r.latency_ms
        assert r.compute_ms is not None and r.compute_ms > 0 and r.cost_usd > 0
        assert r.notes["model"] and not r.cached and r.attempts == 1
    assert len(cache) == 4 and cache.misses == 4

    task = load_task(path)
    report = build_report(task, {"ours": (backend, records)}, RunOptions(n_resamples=200))
    s = report["systems"]["ours"]
    assert s["n_ok"] == 4 and s["tokens"]["completion"] == sum(r.completion_tokens for r in records)
    for name in task.metrics:
        m = s["metrics"][name]
        assert m["n"] == 4 and m["low"] <= m["value"] <= m["high"]
    assert report["manifest"]["template_hash"] == task.template.hash
    assert report["manifest"]["models"]["ours"] == [records[0].notes["model"]]
    assert report["manifest"]["packages"]["nanoforge-evaluation"] == "0.1.0"

    # Re-run: every reply comes from the cache, with the same outputs.
    _, again = _run(path, f"grpc:{server.grpc_target}", cache, n_resamples=200)
    assert all(r.cached for r in again) and cache.hits == 4
    assert [r.output for r in again] == [r.output for r in records]
    cache.close()

    paths = write_report(report, tmp_path / "out")
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "Pareto front on (exact_match, cost, latency): ours" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["systems"]["ours"]["n_ok"] == 4


def test_openai_backend_against_the_servers_http_port(server: Any, write_task: Any) -> None:
    path = write_task(QA[:2], template="Q: {{ question }}\nA:", target_field="answer",
                      sampling={"max_new_tokens": 5, "temperature": 0.0}, metrics=["token_f1"])  # fmt: skip
    _, grpc_recs = _run(path, f"grpc:{server.grpc_target}")
    _, http_recs = _run(path, f"openai:{server.http_base}/v1")
    for g, h in zip(grpc_recs, http_recs, strict=True):
        assert h.error is None, h.error
        assert h.output == g.output  # same model, greedy: the same text over both APIs
        assert h.prompt_tokens == g.prompt_tokens and h.completion_tokens == g.completion_tokens
        assert h.compute_ms is not None  # read from nanoforge's usage.timing_ms extension
        assert h.notes["model"] == g.notes["model"]  # no --model: the endpoint's listed model was used
    chat_path = write_task(QA[:1], template="{{ question }}", target_field="answer", chat=True,
                           sampling={"max_new_tokens": 4})  # fmt: skip
    _, chat = _run(chat_path, f"openai:{server.http_base}/v1")
    assert chat[0].error is None and chat[0].completion_tokens >= 1


def test_choice_and_perplexity_tasks_use_score(server: Any, write_task: Any) -> None:
    rows = [{"q": "is the sky blue", "label": "yes"}, {"q": "is fire cold", "label": "no"}]
    path = write_task(rows, type="choice", template="{{ q }}?", target_field="label", labels=["yes", "no"])
    _, recs = _run(path, f"grpc:{server.grpc_target}")
    for r in recs:
        assert r.error is None, r.error
        assert r.choice_index in (0, 1) and r.prediction == ["yes", "no"][r.choice_index]
        assert len(r.choice_scores) == 2 and all(s < 0 for s in r.choice_scores)
        assert r.choice_scores[r.choice_index] == max(r.choice_scores)
        assert r.target_index == ["yes", "no"].index(r.target)
    text = [{"ctx": "The quick brown", "text": " fox jumps over the lazy dog."}]
    ppl_path = write_task(text, type="perplexity", template="{{ ctx }}", target_field="text",
                          metrics=["perplexity", "bits_per_byte"])  # fmt: skip
    backend, ppl = _run(ppl_path, f"grpc:{server.grpc_target}")
    r = ppl[0]
    assert r.error is None and r.logprob is not None and r.logprob < 0
    assert r.num_tokens >= 3 and r.num_bytes == len(text[0]["text"])
    report = build_report(load_task(ppl_path), {"s": (backend, ppl)}, RunOptions(n_resamples=50))
    got = report["systems"]["s"]["metrics"]
    assert got["perplexity"]["value"] == pytest.approx(math.exp(-r.logprob / r.num_tokens))
    assert got["bits_per_byte"]["value"] == pytest.approx(-r.logprob / (math.log(2) * r.num_bytes))


def test_json_task_output_is_schema_constrained(server: Any, write_task: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"legs": {"type": "integer", "minimum": 0, "maximum": 1000}},
        "required": ["legs"],
    }
    path = write_task([{"animal": "dog", "target": ""}], template="How many legs has a {{ animal }}?",
                      json_schema=schema, metrics=["json_valid", "json_schema"], sampling={"max_new_tokens": 32})  # fmt: skip
    _, recs = _run(path, f"grpc:{server.grpc_target}")
    r = recs[0]
    assert r.error is None, r.error
    # the server decodes under the schema (no fallback note), so even a random model's output validates
    assert "response_format" not in r.notes
    assert 0 <= json.loads(r.output)["legs"] <= 1000
    assert "JSON Schema" in r.prompt


def test_anthropic_sdk_against_a_stub_with_retry_and_recorded_failures(
    anthropic_stub: Any, write_task: Any
) -> None:
    rows = [{"q": "say hello"}, {"q": "FLAKY please"}, {"q": "BROKEN input"}]
    path = write_task(rows, template="{{ q }}", metrics=["exact_match"], sampling={"max_new_tokens": 8})
    _, recs = _run(path, f"anthropic:{anthropic_stub.base_url}", retries=2, backoff_s=0.01)
    ok, flaky, broken = recs
    assert ok.error is None and ok.output == "stub: hello" and ok.attempts == 1
    assert ok.prompt_tokens == 2 and ok.completion_tokens == 2
    assert ok.cost_usd == pytest.approx((2 * 0.80 + 2 * 4.00) / 1e6)
    assert flaky.error is None and flaky.attempts == 2 and anthropic_stub.calls["FLAKY please"] == 2
    assert broken.error is not None and "BadRequestError" in broken.error and broken.attempts == 1


def test_unreachable_server_fails_records_not_the_run(write_task: Any) -> None:
    path = write_task(QA[:2], template="{{ question }}", target_field="answer")
    _, recs = _run(path, "grpc:127.0.0.1:1", retries=1, backoff_s=0.01)
    assert all(r.error and r.error.startswith("UNAVAILABLE") and r.attempts == 2 for r in recs)


def test_local_backend_runs_a_child_server(tiny_model_dir: Path, write_task: Any, server: Any) -> None:
    path = write_task(QA[:2], template="Q: {{ question }}\nA:", target_field="answer",
                      sampling={"max_new_tokens": 5, "temperature": 0.0})  # fmt: skip
    _, local = _run(path, f"local:{tiny_model_dir}")
    _, remote = _run(path, f"grpc:{server.grpc_target}")
    assert [r.output for r in local] == [r.output for r in remote]
    assert all(r.cpu_seconds is not None and r.cpu_seconds >= 0 for r in local)


def test_backend_spec_errors(tmp_path: Path) -> None:
    assert parse_spec("grpc:127.0.0.1:50051") == ("grpc", "127.0.0.1:50051")
    with pytest.raises(
        ValueError, match="bad backend spec 'vllm:x'; expected KIND:TARGET with KIND in anthropic"
    ):
        parse_spec("vllm:x")
    with pytest.raises(ValueError, match="not a model directory"):
        build_backend(f"local:{tmp_path}")


def test_similar_fewshot_through_the_embed_rpc(server: Any, write_task: Any, tiny_model_dir: Path) -> None:
    from nanoforge.evaluation.backends import grpc_embed_fn
    from nanoforge.evaluation.harness import prepare, tokenizer_fingerprint

    embed = grpc_embed_fn(server.grpc_target)
    vectors = embed(["the quick brown fox", "the quick brown fox", "def add(a, b)"])
    assert vectors.shape[0] == 3 and vectors.shape[1] > 1
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0, abs=1e-4)
    path = write_task(QA, id_field="id", template="Q: {{ question }}\nA:", target_field="answer",
                      fewshot={"k": 2, "mode": "similar", "query_field": "question"})  # fmt: skip
    task = load_task(path)
    for row, rec in prepare(task, embed):
        shown = [q["question"] for q in QA if q["question"] in rec.prompt]
        assert len(shown) == 3 and row["question"] in shown  # two examples + the record itself
    fp = tokenizer_fingerprint(tiny_model_dir)
    assert fp is not None and fp["vocab_size"] >= 256 and len(fp["sha256"]) == 16


class _CountingBackend:
    """A stand-in backend that only measures how many calls overlap (the semaphore's job)."""

    kind, target, model = "grpc", "fake", "fake"

    def __init__(self) -> None:
        self.inflight = self.peak = 0

    async def start(self) -> None:
        pass

    async def generate(self, prompt: str, params: Any, *, chat: bool, response_format: Any) -> Any:
        from nanoforge.evaluation.backends import Reply

        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        await asyncio.sleep(0.02)
        self.inflight -= 1
        return Reply(text=prompt.upper(), latency_ms=20.0)

    def is_transient(self, exc: BaseException) -> bool:
        return False

    def cpu_seconds(self) -> None:
        return None


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_is_bounded_by_the_semaphore(write_task: Any, concurrency: int) -> None:
    path = write_task([{"q": f"x{i}"} for i in range(9)], template="{{ q }}")
    backend = _CountingBackend()
    recs = asyncio.run(run_system(load_task(path), backend, opts=RunOptions(concurrency=concurrency)))  # type: ignore[arg-type]
    assert backend.peak == concurrency
    assert [r.output for r in recs] == [f"X{i}" for i in range(9)]
