"""Metric functions on hand-computed examples, and the registry's error messages."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from nanoforge.evaluation.metrics import (
    METRICS,
    RecordView,
    bits_per_byte,
    corpus_bleu,
    corpus_chrf,
    exact_match,
    get_metric,
    json_schema_conforms,
    json_valid,
    lcs_length,
    normalize_answer,
    perplexity,
    rouge_l,
    token_f1,
)


def test_exact_match_normalises_case_punctuation_and_articles() -> None:
    assert normalize_answer("  The Cat, sat! ") == "cat sat"
    assert exact_match("The cat sat.", "cat sat") == 1.0
    assert exact_match("a dog", "cat") == 0.0


def test_token_f1_hand_examples() -> None:
    # pred "cat sat mat" vs gold "cat on mat": overlap 2, P = 2/3, R = 2/3 -> F1 = 2/3
    assert token_f1("the cat sat mat", "cat on the mat") == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: pred "x x y", gold "x y y": overlap x1 + y1 = 2
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0
    assert token_f1("cat", "") == 0.0
    assert token_f1("dog", "cat") == 0.0


def test_lcs_and_rouge_l_hand_examples() -> None:
    assert lcs_length(list("abcd"), list("acdb")) == 3
    assert lcs_length([], ["a"]) == 0
    # "police killed the gunman" vs "police kill the gunman": LCS = police, the, gunman = 3; P = R = 3/4
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(0.75)
    # "the gunman kill police": LCS with the reference = "the gunman" = 2 -> P = R = 1/2 (Lin 2004, S3)
    assert rouge_l("the gunman kill police", "police killed the gunman") == pytest.approx(0.5)
    # unequal lengths: LCS 5, P = 5/6, R = 5/5 -> F1 = 10/11
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    # recall-weighted: beta = 2 -> (1 + 4) P R / (R + 4 P) with P = 5/6, R = 1
    assert rouge_l("the cat sat on the mat", "the cat on the mat", beta=2.0) == pytest.approx(
        5 * (5 / 6) / (1 + 4 * 5 / 6)
    )
    assert rouge_l("x y", "z") == 0.0


def test_bleu_and_chrf_are_sacrebleu_corpus_scores() -> None:
    pairs = [("the cat sat on the mat", "the cat sat on the mat"), ("a dog ran", "the dog ran fast")]
    hyps, refs = [p[0] for p in pairs], [p[1] for p in pairs]
    assert corpus_bleu(pairs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert corpus_chrf(pairs) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert corpus_bleu([("same words here ok", "same words here ok")]) == pytest.approx(100.0)
    assert math.isnan(corpus_bleu([]))


def test_perplexity_and_bits_per_byte_pool_tokens_and_bytes() -> None:
    # two records: log p = -2 over 2 tokens / 4 bytes, and -4 over 2 tokens / 4 bytes
    stats = [(-2.0, 2, 4), (-4.0, 2, 4)]
    assert perplexity(stats) == pytest.approx(math.exp(6 / 4))
    assert bits_per_byte(stats) == pytest.approx(6 / (math.log(2) * 8))
    # pooled, not averaged per record: exp(mean of per-record NLL) would be different here
    uneven = [(-1.0, 1, 1), (-9.0, 3, 3)]
    assert perplexity(uneven) == pytest.approx(math.exp(10 / 4))


def test_json_validity_and_schema() -> None:
    schema = {"type": "object", "properties": {"legs": {"type": "integer"}}, "required": ["legs"]}
    assert json_valid('{"legs": 4}') == 1.0
    assert json_valid('```json\n{"legs": 4}\n```') == 1.0
    assert json_valid("{legs: 4}") == 0.0
    assert json_schema_conforms('{"legs": 4}', schema) == 1.0
    assert json_schema_conforms('{"legs": "four"}', schema) == 0.0
    assert json_schema_conforms("not json", schema) == 0.0


def test_registry_records_and_aggregates() -> None:
    assert {"exact_match", "token_f1", "rouge_l", "bleu", "chrf", "loglik_accuracy", "perplexity",
            "bits_per_byte", "json_valid", "json_schema"} <= set(METRICS)  # fmt: skip
    acc = get_metric("loglik_accuracy")
    views = [RecordView(choice_index=1, target_index=1), RecordView(choice_index=0, target_index=1)]
    assert acc.aggregate([acc.record(v) for v in views]) == 0.5
    with pytest.raises(ValueError, match="needs a choice task"):
        acc.record(RecordView())
    with pytest.raises(ValueError, match=r"unknown metric 'blue'; accepted: .*bleu"):
        get_metric("blue")
    with pytest.raises(ValueError, match="needs the task's 'json_schema'"):
        get_metric("json_schema").record(RecordView(raw_output="{}"))
