"""Structured output: the regex / JSON-schema automata, token masks on our BPE and an HF tokenizer, and
constrained generation through ServingModel with random-weights models (every output must validate).

Random walks: a "walk" picks uniformly among the allowed bytes (or tokens) until the automaton says the
structure is complete, the harshest test of the masks since nothing steers it toward short outputs."""

from __future__ import annotations

import asyncio
import json
import random

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import build_model
from nanoforge.inference_server.engine import EngineConfig
from nanoforge.inference_server.errors import InvalidRequest
from nanoforge.inference_server.structured import (
    Guide,
    GuideProcessor,
    Structurer,
    TokenIndex,
    build_dfa,
    compile_regex,
    schema_to_node,
)
from nanoforge.inference_server.text import ServingModel
from nanoforge.inference_server.types import GenerateInput, SamplingOptions
from nanoforge.tokenizer.chat import CHATML_SPECIALS, add_chat_template
from nanoforge.tokenizer.train import train_bpe

torch.set_num_threads(1)

CORPUS = [
    'The quick brown fox {"name": "fox", "age": 3, "tags": ["a", "b"]} jumps over the lazy dog. ' * 3,
    "def add(a, b):\n    return a + b  # 100% sure, 12.5e3 [1, 2, 3] null true false\n" * 3,
    "Once upon a time there was a little server that answered every request. " * 3,
]

SCHEMAS: list[dict] = [
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    },
    {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue", 7, None]}},
        "required": ["color"],
    },
    {
        "type": "object",
        "properties": {"x": {"type": "number"}, "n": {"type": "integer", "minimum": -3, "maximum": 250}},
    },
    {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4}
        },
        "required": ["items"],
    },
    {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "exclusiveMinimum": 0},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
                    "ok": {"type": "boolean"},
                },
                "required": ["id"],
            },
            "note": {"type": ["string", "null"], "minLength": 1, "maxLength": 6},
        },
        "required": ["user"],
    },
    {
        "type": "array",
        "items": {"anyOf": [{"type": "boolean"}, {"const": "x"}]},
        "minItems": 2,
        "maxItems": 2,
    },
    {"type": "string", "maxLength": 12},
]


# --------------------------------------------------------------------------------------------- helpers
def byte_walk(dfa, rng: random.Random, max_steps: int = 4000) -> bytes:
    """Uniformly random allowed bytes until a terminal state (or an accepting one, by coin flip)."""
    state, out = dfa.start, bytearray()
    for _ in range(max_steps):
        if dfa.terminal[state] or (dfa.accepting[state] and rng.random() < 0.3):
            return bytes(out)
        allowed = [b for b in range(256) if dfa.table[state, b] != dfa.dead]
        b = rng.choice(allowed)
        out.append(b)
        state = int(dfa.table[state, b])
    raise AssertionError("walk did not finish")


def token_walk(guide: Guide, rng: random.Random, vocab: int, max_steps: int = 2000) -> list[int]:
    """Uniformly random allowed tokens (through the real logits processor) until complete or a stop."""
    proc, history = GuideProcessor(guide), []
    for _ in range(max_steps):
        masked = proc(history, torch.zeros(vocab))
        allowed = torch.nonzero(torch.isfinite(masked)).flatten().tolist()
        t = rng.choice(allowed)
        if t in guide.stop_ids:
            return history
        history.append(t)
        state = guide.start()
        for h in history:
            state.advance(h)
        assert not state.failed
        if state.complete:
            return history
    raise AssertionError("token walk did not finish")


@pytest.fixture(scope="module")
def bpe():
    tok = train_bpe(texts=CORPUS, vocab_size=400, special_tokens=CHATML_SPECIALS, show_progress=False)
    return add_chat_template(tok, "chatml")


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from nanoforge.tokenizer.hf import load_hf_tokenizer

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=450,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    out = tmp_path_factory.mktemp("hf_tok")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|endoftext|>", "add_bos_token": False})
    )
    return load_hf_tokenizer(out)


def serving(tok, seed: int = 0, **engine) -> ServingModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=32, max_seq_len=1024)
    return ServingModel.from_parts(
        build_model(cfg).eval(), tok, config=EngineConfig(max_batch_size=8, **engine)
    )


def run(sm: ServingModel, inp: GenerateInput):
    async def go():
        try:
            return await sm.complete(inp)
        finally:
            await sm.shutdown(drain=False)

    return asyncio.run(go())


def run_many(sm: ServingModel, inps: list[GenerateInput]):
    async def go():
        try:
            return await asyncio.gather(*(sm.complete(i) for i in inps))
        finally:
            await sm.shutdown(drain=False)

    return asyncio.run(go())


# ------------------------------------------------------------------------------------------ regex DFA
@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        ("a+b?", ["a", "aaab"], ["", "b", "abb"]),
        ("[0-9]{2,3}", ["12", "999"], ["1", "1234", "ab"]),
        ("(cat|dog)s?", ["cat", "dogs"], ["ca", "cats!"]),
        (r"\d+\.\d{2}", ["3.14"], ["3.1", "x.14"]),
        ("[^a-c]x", ["dx", "Zx"], ["ax", "éx"]),
        ("(?:ab)*", ["", "abab"], ["aba"]),
        ("^héllo|wörld$", ["héllo", "wörld"], ["hello"]),
        (r"[\w-]+@[a-z]+\.(com|org)", ["a_b-c@x.org"], ["@x.com", "a@x.net"]),
    ],
)
def test_is_structured_regex_language(pattern: str, good: list[str], bad: list[str]) -> None:
    dfa = compile_regex(pattern)
    for s in good:
        assert dfa.matches(s.encode()), (pattern, s)
    for s in bad:
        assert not dfa.matches(s.encode()), (pattern, s)


@pytest.mark.parametrize(
    "pattern", ["(ab", "a)", "*a", "a{3,1}", r"a\q", "(?=a)", "[z-a]", "a{2001}", "x**?"]
)
def test_is_structured_bad_regex_is_invalid_request(pattern: str) -> None:
    with pytest.raises(InvalidRequest, match=r"invalid regex|bad"):
        compile_regex(pattern)


def test_is_structured_dfa_is_trimmed_so_every_live_state_can_finish() -> None:
    dfa = compile_regex("a(b|c{2})d|a{0,5}e")
    reach = {dfa.start}
    todo = [dfa.start]
    while todo:
        s = todo.pop()
        for b in range(256):
            t = int(dfa.table[s, b])
            if t != dfa.dead and t not in reach:
                reach.add(t)
                todo.append(t)
    for s in reach:  # every reachable state reaches an accepting one
        seen, todo = {s}, [s]
        while todo and not any(dfa.accepting[x] for x in seen):
            x = todo.pop()
            for b in range(256):
                t = int(dfa.table[x, b])
                if t != dfa.dead and t not in seen:
                    seen.add(t)
                    todo.append(t)
        assert any(dfa.accepting[x] for x in seen)


# --------------------------------------------------------------------------------------- JSON schema
@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_is_structured_schema_byte_walks_validate(schema: dict) -> None:
    dfa = build_dfa(schema_to_node(schema))
    rng = random.Random(1)
    for _ in range(150):
        jsonschema.validate(json.loads(byte_walk(dfa, rng)), schema)


def test_is_structured_schema_accepts_the_obvious_instance() -> None:
    dfa = build_dfa(schema_to_node(SCHEMAS[4]))
    ok = {"user": {"id": 5, "tags": ["ab", "c"], "ok": True}, "note": None}
    assert dfa.matches(json.dumps(ok, separators=(",", ":")).encode())
    assert not dfa.matches(
        json.dumps({**ok, "user": {**ok["user"], "id": 0}}, separators=(",", ":")).encode()
    )
    assert not dfa.matches(json.dumps(ok).encode())  # compact JSON only (no spaces)


def test_is_structured_integer_ranges_are_exact() -> None:
    for lo, hi in [(0, 0), (-3, 250), (17, 1234), (-999, -10), (5, 5)]:
        dfa = build_dfa(schema_to_node({"type": "integer", "minimum": lo, "maximum": hi}))
        accepted = {x for x in range(-1500, 1500) if dfa.matches(str(x).encode())}
        assert accepted == set(range(lo, hi + 1)), (lo, hi)
        assert not dfa.matches(b"007") and not dfa.matches(b"-0")


def test_is_structured_json_object_mode_gives_objects() -> None:
    dfa = build_dfa(schema_to_node({"type": "object"}))
    rng = random.Random(3)
    for _ in range(100):
        assert isinstance(json.loads(byte_walk(dfa, rng)), dict)


_leaf = st.one_of(
    st.builds(lambda m: {"type": "string", "maxLength": m}, st.integers(0, 6)),
    st.just({"type": "integer"}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(
        lambda a, b: {"type": "integer", "minimum": min(a, b), "maximum": max(a, b)},
        st.integers(-500, 500),
        st.integers(-500, 500),
    ),
    st.lists(st.one_of(st.text(max_size=4), st.integers(-9, 9), st.booleans()), min_size=1, max_size=4).map(
        lambda v: {"enum": v}
    ),
)


def _composite(children):
    obj = st.dictionaries(st.text(min_size=1, max_size=5), children, min_size=1, max_size=3).flatmap(
        lambda props: st.builds(
            lambda req: {"type": "object", "properties": props, "required": req},
            st.lists(st.sampled_from(sorted(props)), unique=True),
        )
    )
    arr = st.builds(
        lambda item, lo, extra: {"type": "array", "items": item, "minItems": lo, "maxItems": lo + extra},
        children,
        st.integers(0, 2),
        st.integers(0, 2),
    )
    return st.one_of(obj, arr)


SCHEMA_STRATEGY = st.recursive(_leaf, _composite, max_leaves=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMA_STRATEGY, seed=st.integers(0, 2**16))
def test_is_structured_hypothesis_schemas_walks_validate(schema: dict, seed: int) -> None:
    dfa = build_dfa(schema_to_node(schema))
    rng = random.Random(seed)
    for _ in range(10):
        jsonschema.validate(json.loads(byte_walk(dfa, rng).decode("utf-8")), schema)


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": "strin"}, "unknown type 'strin'"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]}, "undeclared"),
        ({"type": "string", "maxLength": -1}, "maxLength"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "maxItems 1 < minItems 3"),
        ({"$ref": "#/defs/x"}, "unsupported keyword"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "no integer"),
        ({"enum": []}, "enum"),
        ("not a schema", "not a schema object"),
    ],
)
def test_is_structured_invalid_schema_is_invalid_request(schema, needle: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid JSON schema") as e:
        schema_to_node(schema)
    assert needle in str(e.value)


# ----------------------------------------------------------------------------------------- token masks
def test_is_structured_mask_equals_per_token_walk(bpe) -> None:
    dfa = build_dfa(schema_to_node(SCHEMAS[0]))
    index = TokenIndex(bpe)
    specials = set(bpe.special_tokens.values())
    state = dfa.start
    for piece in [b'{"na', b'me":"ab', b'c","age":-1']:
        mask = index.allowed(dfa, state)
        for t in range(bpe.vocab_size):
            expect = t not in specials and dfa.walk(state, bpe.token_bytes(t)) != dfa.dead
            assert bool(mask[t]) == expect, t
        state = dfa.walk(state, piece)
        assert state != dfa.dead


@pytest.mark.parametrize("which", ["bpe", "hf_tok"])
def test_is_structured_token_walks_validate_on_both_tokenizers(request, which: str) -> None:
    tok = request.getfixturevalue(which)
    stops = [tok.special_tokens[s] for s in ("<|im_end|>", "<|endoftext|>") if s in tok.special_tokens]
    structurer = Structurer(tok, tok.vocab_size, stops)
    rng = random.Random(7)
    for schema in SCHEMAS:
        guide = structurer.response_guide({"type": "json_schema", "schema": schema})
        for _ in range(12):
            ids = token_walk(guide, rng, tok.vocab_size)
            text = b"".join(tok.token_bytes(t) for t in ids).decode("utf-8")
            assert tok.decode(ids) == text
            jsonschema.validate(json.loads(text), schema)


# ------------------------------------------------------------------------------ generation end to end
def test_is_structured_random_model_outputs_always_validate(bpe) -> None:
    sm = serving(bpe, seed=1)
    inps, schemas = [], []
    for seed in range(28):
        schema = SCHEMAS[seed % len(SCHEMAS)]
        schemas.append(schema)
        inps.append(
            GenerateInput(
                prompt="Give me JSON:",
                options=SamplingOptions(temperature=1.0, seed=seed, max_new_tokens=400),
                response_format={"type": "json_schema", "schema": schema},
            )
        )
    outs = run_many(sm, inps)
    for out, schema in zip(outs, schemas):
        assert out.finish_reason == "stop" and not out.incomplete, out
        jsonschema.validate(json.loads(out.text), schema)


def test_is_structured_greedy_chat_json_object_and_length_flag(bpe) -> None:
    sm = serving(bpe, seed=2)
    msgs = [{"role": "user", "content": "hi"}]
    full = GenerateInput(
        messages=msgs,
        options=SamplingOptions(temperature=0, max_new_tokens=300),
        response_format={"type": "json_schema", "schema": SCHEMAS[1]},
    )
    short = GenerateInput(
        messages=msgs,
        options=SamplingOptions(temperature=0, max_new_tokens=2),
        response_format={"type": "json_schema", "schema": SCHEMAS[0]},
    )
    a, b = run_many(sm, [full, short])
    jsonschema.validate(json.loads(a.text), SCHEMAS[1])
    assert a.finish_reason == "stop" and not a.incomplete
    assert b.finish_reason == "length" and b.incomplete and len(b.token_ids) == 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(b.text)


def test_is_structured_regex_and_choice(bpe) -> None:
    sm = serving(bpe, seed=3)
    pattern = r"[A-Z][a-z]{1,5}-\d{3}"
    choices = ["yes", "no", "maybe later"]
    inps = [
        GenerateInput(prompt="x", options=SamplingOptions(seed=s, max_new_tokens=50), response_format=rf)
        for s in range(8)
        for rf in ({"type": "regex", "pattern": pattern}, {"type": "choice", "choices": choices})
    ]
    dfa = compile_regex(pattern)
    for i, out in enumerate(run_many(sm, inps)):
        assert out.finish_reason == "stop"
        if i % 2 == 0:
            assert dfa.matches(out.text.encode()), out.text
        else:
            assert out.text in choices


def test_is_structured_hf_tokenizer_generation(hf_tok) -> None:
    sm = serving(hf_tok, seed=4)
    assert sm.stop_ids  # <|endoftext|>
    inps = [
        GenerateInput(
            prompt="JSON:",
            options=SamplingOptions(seed=s, max_new_tokens=400),
            response_format={"type": "json_schema", "schema": SCHEMAS[s % len(SCHEMAS)]},
        )
        for s in range(10)
    ]
    for s, out in enumerate(run_many(sm, inps)):
        assert out.finish_reason == "stop", out
        jsonschema.validate(json.loads(out.text), SCHEMAS[s % len(SCHEMAS)])


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
]


def test_is_structured_forced_tool_calls_are_valid(bpe) -> None:
    sm = serving(bpe, seed=5)
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    named = {"type": "function", "function": {"name": "add"}}
    inps = [
        GenerateInput(
            messages=msgs,
            tools=TOOLS,
            tool_choice=choice,
            options=SamplingOptions(seed=s, max_new_tokens=300),
        )
        for s in range(6)
        for choice in ("required", named)
    ]
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for i, out in enumerate(run_many(sm, inps)):
        assert out.finish_reason == "tool_calls", out
        assert out.text == "" and len(out.tool_calls) == 1
        fn = out.tool_calls[0]["function"]
        if i % 2 == 1:
            assert fn["name"] == "add"
        jsonschema.validate(json.loads(fn["arguments"]), params[fn["name"]])


def test_is_structured_tool_choice_none_hides_tools_and_bad_choices_fail(bpe) -> None:
    sm = serving(bpe, seed=6)
    msgs = [{"role": "user", "content": "hi"}]
    with_tools = sm.prompt_ids(GenerateInput(messages=msgs, tools=TOOLS, tool_choice="auto"))
    without = sm.prompt_ids(GenerateInput(messages=msgs, tools=TOOLS, tool_choice="none"))
    assert without == sm.prompt_ids(GenerateInput(messages=msgs)) and len(with_tools) > len(without)
    bad = [
        ({"tool_choice": "always", "tools": TOOLS}, "tool_choice='always' is invalid"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS},
            "unknown tool 'nope'",
        ),
        ({"tool_choice": "required"}, "needs tools"),
        ({"response_format": {"type": "json_schema", "schema": {"type": "integr"}}}, "unknown type 'integr'"),
        ({"response_format": {"type": "regex", "pattern": "(a"}}, "invalid regex"),
        ({"response_format": {"type": "choice", "choices": []}}, "choices"),
        ({"response_format": {"type": "xml"}}, "response_format.type='xml'"),
        (
            {"response_format": {"type": "json_object"}, "tools": TOOLS, "tool_choice": "required"},
            "cannot be combined",
        ),
    ]
    for kw, needle in bad:
        with pytest.raises(InvalidRequest) as e:
            run(sm, GenerateInput(messages=msgs, options=SamplingOptions(max_new_tokens=5), **kw))
        assert needle in str(e.value), (kw, str(e.value))
        sm = serving(bpe, seed=6)  # run() shut the previous one down


def test_is_structured_concurrent_requests_for_one_schema_compile_it_once(bpe, monkeypatch) -> None:
    import threading

    from nanoforge.inference_server.structured import build as build_mod

    calls: list[int] = []
    real = build_mod.build_dfa

    def counting_build_dfa(node):
        calls.append(1)
        return real(node)

    monkeypatch.setattr(build_mod, "build_dfa", counting_build_dfa)
    structurer = Structurer(bpe, bpe.vocab_size, [bpe.special_tokens["<|im_end|>"]])
    fmt = {"type": "json_schema", "schema": SCHEMAS[0]}
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(structurer.response_guide(fmt))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and all(g is got[0] for g in got)
    assert len(calls) == 1
    structurer.response_guide({"type": "json_schema", "schema": SCHEMAS[1]})
    assert len(calls) == 2 and not structurer._building
