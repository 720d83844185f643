"""Groundedness scoring, answer parsing, the citation constraint, extractive answers and calibration (no servers)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoforge.retriever.calibrate import (
    abstention_prf,
    best_threshold,
    calibrate_collection,
    load_labelled,
    save_threshold,
)
from nanoforge.retriever.collection import Collection
from nanoforge.retriever.embedders import HashingEmbedder
from nanoforge.retriever.grounding import (
    content_words,
    extract_answer,
    groundedness,
    overall_groundedness,
    score_sentences,
    split_cited,
    split_sentences,
)
from nanoforge.retriever.rag import (
    ABSTAIN_TEXT,
    AskOptions,
    Done,
    GenPiece,
    TextDelta,
    Withdraw,
    answer_regex,
    ask,
    ask_events,
    default_threshold,
    join_stream,
)


def test_content_words_and_groundedness() -> None:
    assert content_words("The cat sat on 3 mats [1]") == ["cat", "sat", "mats"]
    src = ["A cat purrs and hunts mice at night."]
    assert groundedness("Cats purr at night [1].", src) == pytest.approx(1 / 3)  # only "night" matches
    assert groundedness("A cat hunts mice [1].", src) == 1.0
    assert groundedness("A cat hunts mice [1].", []) == 0.0  # nothing cited: unsupported
    assert groundedness("The [1].", src) == 0.0  # no content words
    assert groundedness("Dogs fly planes [1].", src) == 0.0


def test_split_cited_and_scores() -> None:
    assert split_cited("A b [1]. C [2][1]. tail") == [
        ("A b [1].", (1,)),
        (" C [2][1].", (2, 1)),
        (" tail", ()),
    ]
    assert split_cited("") == []
    sents = score_sentences(
        "A cat hunts mice [1]. Dogs fly planes [2]. Cats purr [1][2].",
        {1: "a cat hunts mice", 2: "dogs bark; cats purr"},
        0.5,
    )
    assert [s.supported for s in sents] == [True, False, True]
    assert [s.markers for s in sents] == [(1,), (2,), (1, 2)]
    assert sents[2].groundedness == 1.0  # "cats" from [2], "purr" from [2]
    # weights = content words per sentence: 3, 3, 2
    assert overall_groundedness(sents) == pytest.approx((3 * 1 + 3 * (1 / 3) + 2 * 1) / 8)
    assert overall_groundedness([]) == 0.0


def test_answer_regex_only_admits_context_markers() -> None:
    rx = re.compile(answer_regex([1, 2, 3], max_sentences=2))
    assert rx.fullmatch("Cats purr [1]. Dogs bark [3][2].")
    assert rx.fullmatch(ABSTAIN_TEXT)
    for bad in (
        "Cats purr [4].",
        "Cats purr.",
        "Cats [1]] purr [1].",
        "[1] cats [1].",
        "A [1]. B [2]. C [3].",
    ):
        assert not rx.fullmatch(bad), bad
    with pytest.raises(ValueError, match="at least one context marker"):
        answer_regex([])


_SENTENCE = st.tuples(
    st.from_regex(r"[A-Za-z0-9][ a-z.,]{0,20}", fullmatch=True),
    st.lists(st.integers(1, 5), min_size=1, max_size=3),
)


@given(st.lists(_SENTENCE, min_size=1, max_size=3))
def test_parsing_round_trips_grammar_answers(parts: list[tuple[str, list[int]]]) -> None:
    sentences = [f"{body} " + "".join(f"[{m}]" for m in ms) + "." for body, ms in parts]
    answer = " ".join(sentences)
    assert re.fullmatch(answer_regex([1, 2, 3, 4, 5], max_sentences=3), answer)
    got = split_cited(answer)
    assert "".join(t for t, _ in got) == answer
    assert [m for _, m in got] == [tuple(dict.fromkeys(ms)) for _, ms in parts]


def test_split_sentences_and_extractive() -> None:
    assert split_sentences("One. Two!  Three? four") == ["One.", "Two!", "Three? four"]
    emb = HashingEmbedder(128)
    passages = [
        (1, "Dogs bark at strangers. A dog fetches sticks."),
        (2, "Cats are felines. A cat hunts mice at night."),
    ]
    ans = extract_answer("what does a cat hunt at night?", passages, emb.embed, max_sentences=1)
    assert ans == "A cat hunts mice at night [2]."
    two = extract_answer("what does a cat hunt at night?", passages, emb.embed, max_sentences=2)
    assert two.count("[") == 2 and two.endswith("[2].")
    assert extract_answer("q", [(1, "   ")], emb.embed) == ""


def test_join_stream() -> None:
    assert join_stream(["a", "b", None, "c", "d"]) == "cd"
    assert join_stream([]) == ""


def test_best_threshold_picks_the_separating_point() -> None:
    scores = [0.9, 0.8, 0.75, 0.3, 0.2, 0.1]
    labels = [True, True, True, False, False, False]
    cal = best_threshold(scores, labels)
    assert cal.threshold == pytest.approx(0.525) and cal.f1 == 1.0
    # one answerable question scores low: the best F1 is no longer 1, and the threshold stays between
    cal2 = best_threshold([0.9, 0.8, 0.15, 0.3, 0.2, 0.1], labels)
    assert 0.3 < cal2.threshold < 0.8 and cal2.f1 == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert abstention_prf(scores, labels, 0.0) == (0.0, 0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="answerable and unanswerable"):
        best_threshold([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="2 scores but 1 labels"):
        best_threshold([0.1, 0.2], [True])


def test_load_labelled(tmp_path: Path) -> None:
    f = tmp_path / "q.jsonl"
    f.write_text(
        json.dumps({"question": "a?", "answerable": True})
        + "\n\n"
        + json.dumps({"_id": "1", "text": "b?", "metadata": {"answerable": False}})
        + "\n"
    )
    assert load_labelled(f) == [("a?", True), ("b?", False)]
    f.write_text(json.dumps({"question": "a?"}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1: expected"):
        load_labelled(f)


QUESTIONS = [
    ("what do cats hunt at night", True),
    ("which animal barks and fetches sticks", True),
    ("what library does similarity search of dense vectors", True),
    ("what does WAL mode allow in sqlite", True),
    ("who won the football world cup in 1998", False),
    ("how tall is mount kilimanjaro in metres", False),
    ("recipe for a lemon tart with meringue", False),
    ("who composed the four seasons violin concertos", False),
]


def test_calibration_on_a_collection_is_used_as_default(make_collection, corpus) -> None:
    col: Collection = make_collection()
    col.upsert(corpus)
    assert default_threshold(col) == -1.0  # uncalibrated: never abstain on support (cosine >= -1)
    cal = calibrate_collection(col, QUESTIONS, AskOptions(mode="hybrid", k=3))
    assert cal.f1 == 1.0 and cal.n_answerable == 4 and cal.n_unanswerable == 4  # hash cosine separates them
    save_threshold(col, cal, source="unit-test")
    again = Collection.open(col.path)
    assert default_threshold(again) == pytest.approx(cal.threshold)
    assert again.manifest["rag"]["source"] == "unit-test"
    # the calibrated threshold now decides, with no threshold in the request
    opts = AskOptions(answer_mode="extractive", k=3)
    off = asyncio.run(ask(again, "who won the football world cup in 1998", opts, None))
    on = asyncio.run(ask(again, "what do cats hunt at night", opts, None))
    again.close()
    assert off.abstained and off.answer == ABSTAIN_TEXT and "< threshold" in off.abstain_reason
    assert not on.abstained and on.cited == [1] and on.context[0].document_id == "cats"
    assert on.groundedness == 1.0 and "[1]" in on.answer


def test_extractive_drop_and_errors(make_collection, corpus) -> None:
    col: Collection = make_collection()
    col.upsert(corpus)
    res = asyncio.run(
        ask(col, "what do cats hunt", AskOptions(answer_mode="extractive", drop_unsupported=True), None)
    )
    assert not res.abstained and all(s.supported for s in res.sentences)
    with pytest.raises(ValueError, match="question must not be empty"):
        asyncio.run(ask(col, "  ", AskOptions(answer_mode="extractive"), None))
    with pytest.raises(ValueError, match="unknown answer mode 'oracle'"):
        asyncio.run(ask(col, "q", AskOptions(answer_mode="oracle"), None))
    with pytest.raises(ValueError, match="needs an InferenceService"):
        asyncio.run(ask(col, "q", AskOptions(), None))
    tiny = asyncio.run(ask(col, "cats", AskOptions(answer_mode="extractive", max_context_tokens=1), None))
    assert tiny.abstained and "max_context_tokens=1" in tiny.abstain_reason
    cut = asyncio.run(
        ask(col, "cats", AskOptions(answer_mode="extractive", max_context_tokens=12, k=1), None)
    )
    kept, full = cut.context[0].text.split(), cut.retrieved[0].text.split()
    assert len(cut.context) == 1 and 0 < len(kept) < len(full) and kept == full[: len(kept)]  # a cut prefix


def test_fit_context() -> None:
    from nanoforge.retriever.rag import fit_context
    from nanoforge.retriever.search import Hit

    hits = [Hit(str(i), str(i), f"w{i} " * 10, 1.0) for i in range(3)]
    assert [h.chunk_id for h in fit_context(hits, [10, 30, 5], 20)] == ["0", "2"]  # 1 is skipped
    cut = fit_context(hits, [40, 50, 60], 20)
    assert len(cut) == 1 and cut[0].text == " ".join(["w0"] * 4)  # 10 words * 20/40 * 0.9 -> 4


class _ScriptedGenerator:
    """A stand-in model that 'generates' a fixed text in 3-character pieces (it ignores the regex)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.regexes: list[str] = []

    async def count_tokens(self, texts, model):
        return [len(t.split()) for t in texts]

    async def stream(self, messages, regex, opts):
        self.regexes.append(regex)
        for i in range(0, len(self.text), 3):
            last = i + 3 >= len(self.text)
            yield GenPiece(self.text[i : i + 3], 1 if last else 0, 10 if last else 0, 5 if last else 0)


def _events(col, text: str, **kw):
    async def go():
        return [
            ev
            async for ev in ask_events(
                col, "what do cats hunt", AskOptions(k=2, **kw), _ScriptedGenerator(text)
            )
        ]

    return asyncio.run(go())


def _answer(events) -> str:
    return join_stream(
        [None if isinstance(e, Withdraw) else e.text for e in events if not isinstance(e, Done)]
    )


def test_stream_drop_and_withdraw_with_a_scripted_model(make_collection, corpus) -> None:
    col: Collection = make_collection()
    col.upsert(corpus)
    text = "A cat hunts mice [1]. Dogs fly planes [1]. A cat purrs [1]."
    evs = _events(col, text, drop_unsupported=True)
    res = evs[-1].result
    assert res.answer == "A cat hunts mice [1]. A cat purrs [1]." == _answer(evs)
    assert [s.supported for s in res.sentences] == [True, False, True] and res.cited == [1]
    deltas = [e.text for e in evs if isinstance(e, TextDelta)]
    assert deltas == ["A cat hunts mice [1].", " A cat purrs [1]."]  # whole checked sentences only
    flagged = _events(col, text)  # flag mode: streamed as generated, the unsupported sentence stays
    assert flagged[-1].result.answer == text == _answer(flagged) and len(flagged) > 10
    assert res.prompt_tokens == 10 and res.completion_tokens == 5
    bad = _events(col, "Dogs fly planes [1]. Zebras sing opera [2].")
    assert any(isinstance(e, Withdraw) for e in bad) and _answer(bad) == ABSTAIN_TEXT
    assert bad[-1].result.abstained and "groundedness" in bad[-1].result.abstain_reason
    model_abstains = _events(col, ABSTAIN_TEXT)
    assert (
        not any(isinstance(e, Withdraw) for e in model_abstains) and _answer(model_abstains) == ABSTAIN_TEXT
    )
    assert model_abstains[-1].result.abstain_reason == "the model found no answer in the passages"
