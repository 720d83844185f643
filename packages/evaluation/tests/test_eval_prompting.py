"""Prompt templates, few-shot selection, answer extraction, JSON prompts and the log-likelihood classifier."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import numpy as np
import pytest

from nanoforge.evaluation.prompting import (
    COT_INSTRUCTION,
    FewShotConfig,
    LogLikelihoodClassifier,
    PromptTemplate,
    bag_of_words_embed,
    build_prompt,
    extract_answer,
    json_instruction,
    memoized,
    response_format_for,
    select_examples,
)

POOL = [
    {"q": "what colour is the sky", "a": "blue"},
    {"q": "how many legs does a dog have", "a": "4"},
    {"q": "what colour is grass", "a": "green"},
    {"q": "capital of france", "a": "paris"},
    {"q": "how many legs does a bird have", "a": "2"},
]


def test_template_variables_hash_and_strictness() -> None:
    t = PromptTemplate("Q: {{ q }}{% if hint %} ({{ hint }}){% endif %}\nA:", name="qa")
    assert t.variables == {"q", "hint"}
    assert t.render(q="2+2?", hint="") == "Q: 2+2?\nA:"
    assert t.hash == PromptTemplate(t.source).hash
    assert t.hash != PromptTemplate(t.source + " ").hash
    with pytest.raises(ValueError, match=r"needs variables \['hint'\]"):
        t.render(q="x")
    with pytest.raises(ValueError, match="bad prompt template"):
        PromptTemplate("{{ q ")


def test_template_is_sandboxed() -> None:
    evil = PromptTemplate("{{ q.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ValueError, match="unsafe"):
        evil.render(q="x")


def test_fewshot_fixed_random_similar() -> None:
    row = {"q": "how many legs does a cat have", "a": "4"}
    fixed = select_examples(row, POOL, FewShotConfig(k=2, mode="fixed"))
    assert fixed == POOL[:2]
    r1 = select_examples(row, POOL, FewShotConfig(k=3, mode="random", seed=1, query_field="q"))
    r1b = select_examples(row, POOL, FewShotConfig(k=3, mode="random", seed=1, query_field="q"))
    draws = {
        tuple(
            e["q"]
            for e in select_examples(row, POOL, FewShotConfig(k=3, mode="random", seed=s, query_field="q"))
        )
        for s in range(6)
    }
    assert r1 == r1b and len(draws) > 1
    sim = select_examples(row, POOL, FewShotConfig(k=2, mode="similar", query_field="q"))
    assert {e["q"] for e in sim} == {"how many legs does a dog have", "how many legs does a bird have"}
    # the record itself is never its own example
    assert POOL[0] not in select_examples(POOL[0], POOL, FewShotConfig(k=4, mode="fixed"))
    with pytest.raises(ValueError, match="unknown few-shot mode 'nearest'"):
        select_examples(row, POOL, FewShotConfig(k=1, mode="nearest"))


def test_similar_uses_a_pluggable_embed_function() -> None:
    calls: list[int] = []

    def embed(texts: Sequence[str]) -> np.ndarray:  # prefers texts with the same length
        calls.append(len(texts))
        v = np.array([[1.0, len(t)] for t in texts])
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    row = {"q": "x" * len("capital of france")}
    picked = select_examples(row, POOL, FewShotConfig(k=1, mode="similar", query_field="q"), embed)
    assert picked == [POOL[3]] and calls == [1 + len(POOL)]


def test_memoized_embed_embeds_each_text_once() -> None:
    seen: list[str] = []

    def spy(texts: Sequence[str]) -> np.ndarray:
        seen.extend(texts)
        return bag_of_words_embed(texts)

    embed = memoized(spy)
    cfg = FewShotConfig(k=1, mode="similar", query_field="q")
    for row in POOL:
        select_examples(row, POOL, cfg, embed)
    assert sorted(seen) == sorted(r["q"] for r in POOL)
    assert np.allclose(embed(["capital of france"]), bag_of_words_embed(["capital of france"]))


def test_bag_of_words_cosine() -> None:
    v = bag_of_words_embed(["a b c", "a b c", "x y z", ""])
    assert v[0] @ v[1] == pytest.approx(1.0)
    assert v[0] @ v[2] == pytest.approx(0.0, abs=1e-6)
    assert np.all(v[3] == 0)


def test_build_prompt_fewshot_cot_and_custom_layout() -> None:
    t = PromptTemplate("Q: {{ q }}\nA:")
    text = build_prompt(t, {"q": "sky?"}, POOL[:2], target_field="a")
    assert (
        text == "Q: what colour is the sky\nA: blue\n\nQ: how many legs does a dog have\nA: 4\n\nQ: sky?\nA:"
    )
    assert build_prompt(t, {"q": "sky?"}, cot=True).endswith(COT_INSTRUCTION + "\n")
    custom = PromptTemplate("{% for e in examples %}{{ e.q }}={{ e.a }};{% endfor %}{{ q }}=")
    assert (
        build_prompt(custom, {"q": "z"}, POOL[:2])
        == "what colour is the sky=blue;how many legs does a dog have=4;z="
    )


@pytest.mark.parametrize(
    ("text", "method", "options", "expected"),
    [
        ("2 apples and 3 pears: 2 + 3 = 5. The answer is 5.", "last_number", {}, "5"),
        ("Total: 1,234.50 dollars", "last_number", {}, "1234.50"),
        ("no digits", "last_number", {}, ""),
        ("Reasoning... Answer: Paris\n", "regex", {"pattern": r"Answer:\s*(\w+)"}, "Paris"),
        ("Answer: A ... Answer: B", "regex", {"pattern": r"Answer:\s*(\w+)"}, "B"),
        ("It is not negative; it is Positive.", "label", {"labels": ["positive", "negative"]}, "positive"),
        ("positively unclear", "label", {"labels": ["positive", "negative"]}, ""),
        ("  first\nsecond", "first_line", {}, "first"),
    ],
)
def test_answer_extraction(text: str, method: str, options: dict, expected: str) -> None:
    assert extract_answer(text, method, **options) == expected


def test_answer_extraction_errors() -> None:
    with pytest.raises(ValueError, match="unknown answer extractor 'llm'"):
        extract_answer("x", "llm")
    with pytest.raises(ValueError, match="needs a 'pattern'"):
        extract_answer("x", "regex")


def test_json_prompt_helpers() -> None:
    schema = {"type": "object", "properties": {"legs": {"type": "integer"}}}
    assert json.dumps(schema, sort_keys=True) in json_instruction(schema)
    assert json.loads(response_format_for(schema)["json_schema"]) == schema


def test_loglik_classifier_picks_the_best_label_and_normalises() -> None:
    seen: list[tuple[str, list[str]]] = []
    table = {" yes": (-3.0, 1), " no": (-2.0, 1), " not sure": (-3.0, 3)}

    async def score(context: str, conts: Sequence[str]) -> list[tuple[float, int]]:
        seen.append((context, list(conts)))
        return [table[c] for c in conts]

    t = PromptTemplate("Is {{ x }} true?")
    clf = LogLikelihoodClassifier(t, ["yes", "no", "not sure"], score)
    out = asyncio.run(clf.classify({"x": "it"}))
    assert (out.label, out.index, out.scores) == ("no", 1, [-3.0, -2.0, -3.0])
    assert seen == [("Is it true?", [" yes", " no", " not sure"])]
    per_token = asyncio.run(
        LogLikelihoodClassifier(t, ["yes", "no", "not sure"], score, normalize="per_token").classify(
            {"x": "it"}
        )
    )
    assert per_token.label == "not sure" and per_token.scores[2] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match=">= 2 labels"):
        LogLikelihoodClassifier(t, ["only"], score)
