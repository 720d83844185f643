"""The text layer (ServingModel): prompts, chat, stop strings, UTF-8-safe streaming, tool calls, logprobs,
score and embed, cancellation by closing the stream, and its error answers.

A byte tokenizer (256 byte ids + ChatML specials) and tiny models keep it fast. ``ScriptedGPT`` is a real
GPT whose logits are replaced by a one-hot "script" indexed by how many tokens the row has generated, so
the text it writes is known exactly (stop strings, emoji, tool calls)."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.generate import generate
from nanoforge.core_model.model import GPT
from nanoforge.inference_server.detok import TextStream, held_prefix_len
from nanoforge.inference_server.engine import EngineConfig
from nanoforge.inference_server.errors import InvalidRequest, NotFound, Unavailable
from nanoforge.inference_server.text import ServingModel
from nanoforge.inference_server.types import GenerateInput, SamplingOptions
from nanoforge.tokenizer import Tokenizer
from nanoforge.tokenizer.chat import CHATML_SPECIALS, chatml_template

torch.set_num_threads(1)
TOK = Tokenizer([], special_tokens=CHATML_SPECIALS, chat_template=chatml_template())
IM_END, CALL_START, CALL_END = 257, 258, 259


def config(max_seq_len: int = 128) -> ModelConfig:
    return ModelConfig(
        vocab_size=260, n_layer=2, n_head=4, d_model=32, max_seq_len=max_seq_len, positions="rope"
    )


class ScriptedGPT(GPT):
    """Writes ``script`` after a prompt of ``prompt_len`` tokens (then <|im_end|>)."""

    def __init__(self, script: list[int], prompt_len: int, max_seq_len: int = 128) -> None:
        super().__init__(config(max_seq_len))
        self.script, self.prompt_len = script, prompt_len

    def forward(self, idx, *, state=None, **kw):
        logits = super().forward(idx, state=state, **kw)
        if state is None:
            return logits
        out = torch.full_like(logits, -10.0)
        for b, n in enumerate(state.next_pos.tolist()):
            k = n - self.prompt_len  # tokens generated so far (< 0 inside a chunked prefill: unused logits)
            out[b, -1, self.script[k] if 0 <= k < len(self.script) else IM_END] = 10.0
        return out


def serve(model: GPT, **kw) -> ServingModel:
    return ServingModel.from_parts(
        model.eval(), TOK, name="tiny", config=EngineConfig(**{"block_size": 4, **kw})
    )


def random_model() -> GPT:
    torch.manual_seed(0)
    return GPT(config()).eval()


def run(coro):
    return asyncio.run(coro)


async def collect(sm: ServingModel, inp: GenerateInput):
    return [c async for c in sm.generate(inp)]


def opts(**kw) -> SamplingOptions:
    return SamplingOptions(**{"temperature": 0.0, "max_new_tokens": 40, **kw})


# ------------------------------------------------------------------------------------------ TextStream
def test_held_prefix_len_examples():
    assert held_prefix_len("abc\n", ["\n\n"]) == 1
    assert held_prefix_len("abc", ["xyz"]) == 0
    assert held_prefix_len("the EN", ["END", "N!"]) == 2


def test_stop_string_across_tokens_is_trimmed():
    s = TextStream(TOK.stream_decoder(), stop=["END"])
    shown = "".join(s.push(b) for b in b"hello EN")
    assert shown == "hello "  # "EN" could begin "END": held back
    assert s.push(ord("D")) == "" and s.stopped
    assert s.shown == "hello "
    s2 = TextStream(TOK.stream_decoder(), stop=["END"])
    text = "".join(s2.push(b) for b in b"hello ENx") + s2.finish()
    assert text == "hello ENx" and not s2.stopped


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab é€😀\n")), max_size=30), st.sampled_from(["", "😀", "b\n"]))
def test_stream_never_breaks_utf8_and_reassembles(text, stop):
    s = TextStream(TOK.stream_decoder(), stop=[stop] if stop else [])
    parts = [s.push(b) for b in text.encode()] + [s.finish()]
    assert all("\ufffd" not in p for p in parts)
    expected = text.split(stop)[0] if stop else text
    assert "".join(parts) == expected


# --------------------------------------------------------------------------------------- generation
def test_prompt_generation_matches_core_generate_and_streams_deltas():
    model = random_model()
    sm = serve(model)
    chunks = run(collect(sm, GenerateInput(prompt="hello", options=opts(max_new_tokens=12))))
    ref = generate(model, [list(b"hello")], max_new_tokens=12, temperature=0, stop_token_ids=sm.stop_ids)[0]
    ids = [t for c in chunks for t in c.token_ids]
    assert ids == [t for t in ref if t not in sm.stop_ids]
    last = chunks[-1]
    assert last.finish_reason in ("length", "stop") and last.usage.prompt_tokens == 5
    assert last.usage.completion_tokens == len(ref) and last.usage.total_ms > 0
    text = "".join(c.text for c in chunks)
    assert text == TOK.decode([t for t in ref if t not in sm.stop_ids])


def test_concurrent_async_requests_each_match_generate_alone():
    model = random_model()
    sm = serve(model, max_batch_size=3, prefill_chunk=4)
    prompts = [bytes([97 + i]) * (1 + 3 * i) for i in range(7)]

    async def all_at_once():
        inps = [
            GenerateInput(prompt_ids=list(p), options=opts(max_new_tokens=5 + i))
            for i, p in enumerate(prompts)
        ]
        return await asyncio.gather(*(sm.complete(x) for x in inps))

    outs = run(all_at_once())
    for i, (p, out) in enumerate(zip(prompts, outs)):
        ref = generate(model, [list(p)], max_new_tokens=5 + i, temperature=0, stop_token_ids=sm.stop_ids)[0]
        assert out.token_ids == [t for t in ref if t not in sm.stop_ids]
    assert sm.metrics()["total_finished"] == 7
    run(sm.shutdown())


def test_stop_string_trims_and_frees_the_request():
    script = list(b"The answer.\n\nIgnored tail that is long enough")
    sm = serve(ScriptedGPT(script, prompt_len=3))
    out = run(sm.complete(GenerateInput(prompt_ids=[1, 2, 3], options=opts(stop=["\n\n"]))))
    assert out.text == "The answer." and out.finish_reason == "stop"
    assert out.usage.completion_tokens == len(b"The answer.\n\n")
    deadline = time.monotonic() + 5
    while sm.engine.sched.inflight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sm.engine.sched.inflight == 0 and sm.engine.table.count == 0


def test_stop_token_not_shown_and_emoji_streamed_whole():
    script = [*"ok 😀 €".encode(), IM_END]
    sm = serve(ScriptedGPT(script, prompt_len=2))
    chunks = run(collect(sm, GenerateInput(prompt_ids=[1, 2], options=opts())))
    assert "".join(c.text for c in chunks) == "ok 😀 €"
    assert all("\ufffd" not in c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop" and IM_END not in [t for c in chunks for t in c.token_ids]


def test_chat_with_tools_returns_openai_tool_calls():
    messages = [{"role": "user", "content": "weather in Paris?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    from nanoforge.tokenizer.chat import render_chat

    plen = len(render_chat(TOK, messages, add_generation_prompt=True, tools=tools).ids)
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    script = [*b"Let me check. ", CALL_START, *call.encode(), CALL_END, IM_END]
    sm = serve(ScriptedGPT(script, prompt_len=plen, max_seq_len=1024), max_batch_size=1)
    out = run(sm.complete(GenerateInput(messages=messages, tools=tools, options=opts(max_new_tokens=100))))
    assert out.finish_reason == "tool_calls"
    assert out.text == "Let me check. "
    (tc,) = out.tool_calls
    assert tc["type"] == "function" and tc["id"].startswith("call_")
    assert tc["function"]["name"] == "get_weather"
    assert json.loads(tc["function"]["arguments"]) == {"city": "Paris"}
    # tool_choice="none": the tools are not rendered into the prompt and the same reply is plain text
    plen2 = len(render_chat(TOK, messages, add_generation_prompt=True).ids)
    assert plen2 < plen
    sm2 = serve(ScriptedGPT(script, prompt_len=plen2, max_seq_len=1024), max_batch_size=1)
    out2 = run(
        sm2.complete(
            GenerateInput(
                messages=messages, tools=tools, tool_choice="none", options=opts(max_new_tokens=100)
            )
        )
    )
    assert out2.finish_reason == "stop" and out2.tool_calls is None and "<tool_call>" in out2.text


def test_logprobs_in_chunks():
    sm = serve(random_model())
    out = run(
        sm.complete(GenerateInput(prompt="ab", options=opts(max_new_tokens=4, logprobs=True, top_logprobs=2)))
    )
    assert len(out.logprobs) == len(out.token_ids) >= 1
    lp = out.logprobs[0]
    assert lp.token_id == out.token_ids[0] and lp.logprob <= 0 and len(lp.top) == 2
    assert lp.top[0][0] == lp.token_id and isinstance(lp.top[0][1], str)


def test_closing_the_stream_cancels_the_request():
    sm = serve(random_model())

    async def first_then_close():
        gen = sm.generate(GenerateInput(prompt="abc", options=opts(max_new_tokens=100, stop_token_ids=[])))
        first = await gen.__anext__()
        await gen.aclose()
        return first

    first = run(first_then_close())
    assert first.token_ids
    deadline = time.monotonic() + 5
    while sm.engine.sched.inflight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sm.engine.sched.inflight == 0 and sm.engine.table.count == 0 and sm.engine.cache.pinned() == 0


def test_errors_are_invalid_request_or_not_found():
    sm = serve(random_model(), max_len=16)

    async def go(inp):
        return await sm.complete(inp)

    with pytest.raises(InvalidRequest, match="exactly one"):
        run(go(GenerateInput(prompt="a", prompt_ids=[1])))
    with pytest.raises(InvalidRequest, match="invalid regex"):
        run(go(GenerateInput(prompt="a", response_format={"type": "regex", "pattern": "(a"})))
    with pytest.raises(NotFound, match="unknown adapter 'x'"):
        run(go(GenerateInput(prompt="a", adapter="x")))
    with pytest.raises(InvalidRequest, match="limit is 15"):
        run(go(GenerateInput(prompt="x" * 40)))
    with pytest.raises(InvalidRequest, match="top_p"):
        run(go(GenerateInput(prompt="a", options=opts(top_p=0.0))))
    with pytest.raises(InvalidRequest, match="role"):
        run(go(GenerateInput(messages=[{"role": "wizard", "content": "hi"}])))


# ------------------------------------------------------------------------------------- score / embed
def test_score_matches_a_manual_forward():
    model = random_model()
    sm = serve(model)
    greedy = generate(model, [list(b"abc")], max_new_tokens=2, temperature=0)[0]
    res = run(sm.score("abc", [greedy, "zz", "q"]))
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([[*b"abc", *b"zz"]]))[0], -1)
    manual = float(lp[2, ord("z")] + lp[3, ord("z")])
    assert res[1]["logprob"] == pytest.approx(manual, abs=1e-4) and res[1]["num_tokens"] == 2
    assert res[0]["is_greedy"] and len(res[0]["token_logprobs"]) == 2
    assert res[2]["num_tokens"] == 1
    with pytest.raises(InvalidRequest, match="context is empty"):
        run(sm.score("", ["a"]))


def test_embed_is_padding_independent_and_normalised():
    sm = serve(random_model())
    alone = run(sm.embed(["hi"]))[0]
    batch = run(sm.embed(["hi", "a much longer text"]))
    assert len(alone) == 32
    assert math.isclose(sum(x * x for x in alone), 1.0, rel_tol=1e-5)
    assert alone == pytest.approx(batch[0], abs=1e-5)
    raw = run(sm.embed([list(b"hi")], normalize=False))[0]
    assert not math.isclose(sum(x * x for x in raw), 1.0, rel_tol=1e-3)


def test_info_metrics_tokenize_and_shutdown():
    sm = serve(random_model(), max_batch_size=3)
    assert sm.tokenize("hé") == list("hé".encode()) and sm.detokenize(list("hé".encode())) == "hé"
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        sm.detokenize([999])
    info = sm.model_info()
    assert info["name"] == "tiny" and info["max_batch_size"] == 3 and info["vocab_size"] == 260
    run(sm.complete(GenerateInput(prompt="x", options=opts(max_new_tokens=3))))
    m = sm.metrics()
    assert m["total_finished"] == 1 and m["queue_depth"] == 0 and "prefix_cache_hit_rate" in m
    assert sm.list_adapters() == []
    with pytest.raises(InvalidRequest, match="cannot load adapter 'a'"):
        run(sm.load_adapter("a", "/nowhere"))
    run(sm.shutdown(drain=True, timeout=5))
    with pytest.raises(Unavailable):
        run(sm.complete(GenerateInput(prompt="x")))


def test_load_from_a_model_directory(tmp_path):
    from nanoforge.core_model.checkpoint import save_model
    from nanoforge.tokenizer.io import save_tokenizer

    model = random_model()
    save_model(model, tmp_path, generation_config={"eos_token_id": 5})
    save_tokenizer(TOK, tmp_path / "tokenizer")
    sm = ServingModel.load(tmp_path, max_batch_size=2, max_seq_len=64, prefill_chunk=16)
    try:
        assert sm.name == tmp_path.name and sm.engine.max_len == 64 and sm.engine.table.capacity == 2
        assert 5 in sm.stop_ids and IM_END in sm.stop_ids  # generation_config eos + the template's turn end
        out = run(sm.complete(GenerateInput(prompt="hey", options=opts(max_new_tokens=6))))
        ref = generate(model, [list(b"hey")], max_new_tokens=6, temperature=0, stop_token_ids=sm.stop_ids)[0]
        assert out.token_ids == [t for t in ref if t not in sm.stop_ids]
    finally:
        run(sm.shutdown())
    with pytest.raises(InvalidRequest, match="quantize"):
        ServingModel.load(tmp_path, quantize="int3")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_engine_on_cuda_matches_generate():
    model = random_model().cuda()
    sm = serve(model, max_batch_size=4)
    prompts = [list(b"a" * (i + 1)) for i in range(6)]

    async def go():
        inps = [
            GenerateInput(prompt_ids=p, options=opts(max_new_tokens=8, seed=i)) for i, p in enumerate(prompts)
        ]
        return await asyncio.gather(*(sm.complete(x) for x in inps))

    for p, out in zip(prompts, run(go())):
        ref = generate(model, [p], max_new_tokens=8, temperature=0, stop_token_ids=sm.stop_ids)[0]
        assert out.token_ids == [t for t in ref if t not in sm.stop_ids]
    run(sm.shutdown())


def test_bos_is_added_when_the_tokenizer_asks_for_it():
    class BosTok:  # an HF-style tokenizer whose model expects BOS (Llama); everything else from TOK
        add_bos_token = True
        bos_id = 256

        def __getattr__(self, name):
            return getattr(TOK, name)

    model = random_model()
    sm = ServingModel.from_parts(model, BosTok(), config=EngineConfig(block_size=4))
    try:
        assert sm.prompt_ids(GenerateInput(prompt="hi")) == [256, 104, 105]
        assert sm.prompt_ids(GenerateInput(prompt_ids=[104])) == [104]  # ids are used as given
        assert sm.tokenize("hi") == [104, 105]  # tokenize itself adds nothing unless asked
        with_bos = run(sm.score("hi", ["!"]))[0]["logprob"]
        explicit = run(sm.score([256, 104, 105], [[33]]))[0]["logprob"]
        assert with_bos == pytest.approx(explicit, abs=1e-6)
    finally:
        run(sm.shutdown())
