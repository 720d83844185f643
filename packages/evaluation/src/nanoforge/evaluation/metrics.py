"""Evaluation metrics: a registry of per-record statistics plus the function that aggregates them.

Every metric is split in two so that bootstrap resampling works the same way for all of them:
``record(view) -> stat`` turns one evaluated record into a small statistic (a float for mean-style
metrics, a tuple for corpus-level ones), and ``aggregate(stats) -> float`` turns a list of those into the
headline number. Mean metrics (exact match, token F1, ROUGE-L, JSON validity ...) aggregate with a mean;
BLEU and chrF keep the (hypothesis, reference) pair and call sacrebleu's *corpus* scorers; perplexity and
bits per byte keep (log-prob, tokens, bytes) and pool them, as the definitions require.

    >>> exact_match("The cat.", "the cat")
    1.0
    >>> round(token_f1("the cat sat", "the cat"), 3)  # "the" is dropped: P = 1/2, R = 1
    0.667
    >>> rouge_l("the cat sat on the mat", "the cat on the mat")
    0.9090909090909091

Retrieval and ranking metrics (recall@k, MRR, nDCG@k, hit rate@k; ``k`` comes from the task) read the
ranked ids a service returned and the record's graded relevant ids; groundedness and faithfulness read an
answer and the contexts it was grounded on, offline (no service needed).

    >>> ndcg_at_k(["d3", "d1"], {"d1": 1.0}, 2)  # the relevant doc at rank 2: 1 / log2(3)
    0.6309297535714575
    >>> groundedness("Paris is in France [1]. It has 90 million people [1].", ["Paris is a city in France."])
    0.5

What it deliberately does not do: LLM judges (``judge.py``), or any I/O.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema


@dataclass
class RecordView:
    """What a metric may look at for one evaluated record.

    Attributes:
        prediction: the text the system produced (after answer extraction, if the task extracts).
        target: the reference text (or the correct label for choice tasks).
        raw_output: the unextracted model output.
        choice_index: the index the system picked (choice tasks), or None.
        target_index: the index of the correct choice (choice tasks), or None.
        logprob: summed log-probability of the target (perplexity tasks), or None.
        num_tokens: tokens scored for ``logprob``.
        num_bytes: UTF-8 bytes of the scored text.
        extra: task settings a metric may need, e.g. ``{"json_schema": {...}}`` or ``{"k": 10}``.
        retrieved: ranked ids a retriever / recommender returned (retrieval, rag, ranking tasks), or None.
        relevant: graded relevant ids of the record (``{id: grade > 0}``), or None.
        contexts: the texts an answer was grounded on (citation marker i -> contexts[i - 1]), or None.
        abstained: whether a RAG system declined to answer, or None.
    """

    prediction: str = ""
    target: str = ""
    raw_output: str = ""
    choice_index: int | None = None
    target_index: int | None = None
    logprob: float | None = None
    num_tokens: int = 0
    num_bytes: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    retrieved: Sequence[str] | None = None
    relevant: Mapping[str, float] | None = None
    contexts: Sequence[str] | None = None
    abstained: bool | None = None


@dataclass(frozen=True)
class Metric:
    """A named metric: ``record`` maps a RecordView to a statistic, ``aggregate`` pools statistics."""

    name: str
    record: Callable[[RecordView], Any]
    aggregate: Callable[[Sequence[Any]], float]
    higher_is_better: bool = True
    description: str = ""


# ---------------------------------------------------------------------------------------------- text
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, drop punctuation and articles, squeeze spaces.

    ``"The  Cat!" -> "cat"``
    """
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, target: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(target))


def token_f1(prediction: str, target: str) -> float:
    """Harmonic mean of token precision and recall on normalised bags of words (SQuAD F1).

    Two empty strings score 1.0; one empty string scores 0.0.
    """
    pred, gold = normalize_answer(prediction).split(), normalize_answer(target).split()
    if not pred or not gold:
        return float(pred == gold)
    overlap = sum((Counter(pred) & Counter(gold)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)) time, O(len(b)) memory).

    ``["a", "b", "c", "d"], ["a", "c", "d", "b"] -> 3``
    """
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, target: str, beta: float = 1.0) -> float:
    """ROUGE-L F-measure on lower-cased whitespace tokens (Lin 2004), with recall weight ``beta``.

    P = LCS / len(pred), R = LCS / len(ref), F = (1 + b^2) P R / (R + b^2 P).
    """
    pred, ref = prediction.lower().split(), target.lower().split()
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return float(not pred and not ref)
    p, r = lcs / len(pred), lcs / len(ref)
    return (1 + beta**2) * p * r / (r + beta**2 * p)


# ---------------------------------------------------------------------------------------------- json
def json_valid(text: str) -> float:
    """1.0 when ``text`` (surrounding whitespace and a ```json fence allowed) parses as JSON."""
    return float(parse_json_output(text) is not _INVALID)


_INVALID = object()
#: What :func:`parse_json_output` returns for text that is not JSON (compare with ``is``).
INVALID_JSON = _INVALID
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_json_output(text: str) -> Any:
    """The JSON value in a model output, or the :data:`INVALID_JSON` sentinel."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        return json.loads(body)
    except ValueError:
        return _INVALID


def json_schema_conforms(text: str, schema: Mapping[str, Any]) -> float:
    """1.0 when the output is valid JSON that validates against ``schema`` (JSON Schema, any draft)."""
    value = parse_json_output(text)
    if value is _INVALID:
        return 0.0
    validator = jsonschema.validators.validator_for(schema)(schema)
    return float(validator.is_valid(value))


# ---------------------------------------------------------------------------------------------- pooled
def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no values."""
    return float(sum(values) / len(values)) if values else math.nan


def corpus_bleu(pairs: Sequence[tuple[str, str]]) -> float:
    """sacrebleu corpus BLEU (0-100) of (hypothesis, reference) pairs."""
    import sacrebleu

    if not pairs:
        return math.nan
    hyps, refs = zip(*pairs, strict=True)
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def corpus_chrf(pairs: Sequence[tuple[str, str]]) -> float:
    """sacrebleu corpus chrF (0-100) of (hypothesis, reference) pairs."""
    import sacrebleu

    if not pairs:
        return math.nan
    hyps, refs = zip(*pairs, strict=True)
    return float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score)


def perplexity(stats: Sequence[tuple[float, int, int]]) -> float:
    """exp(-sum log p / sum tokens) over (logprob, tokens, bytes) triples."""
    tokens = sum(s[1] for s in stats)
    return math.exp(-sum(s[0] for s in stats) / tokens) if tokens else math.nan


def bits_per_byte(stats: Sequence[tuple[float, int, int]]) -> float:
    """-sum log p / (ln 2 * sum bytes): tokenizer-independent, so models with different vocabularies compare."""
    n_bytes = sum(s[2] for s in stats)
    return -sum(s[0] for s in stats) / (math.log(2) * n_bytes) if n_bytes else math.nan


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (records a metric does not apply to); NaN when none are left."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


# ---------------------------------------------------------------------------------------------- ranking
def recall_at_k(retrieved: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """Share of the relevant ids found in the top ``k``.

    >>> recall_at_k(["a", "x", "b"], {"a": 1, "b": 1}, 2)
    0.5
    """
    rel = {d for d, g in relevant.items() if g > 0}
    return len(rel & set(retrieved[:k])) / len(rel) if rel else math.nan


def hit_rate_at_k(retrieved: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """1.0 when any relevant id is in the top ``k`` (HR@k of next-item recommendation)."""
    return float(any(relevant.get(d, 0) > 0 for d in retrieved[:k]))


def reciprocal_rank(retrieved: Sequence[str], relevant: Mapping[str, float]) -> float:
    """1 / rank of the first relevant id (0 when none was returned); its mean is MRR."""
    for i, d in enumerate(retrieved, 1):
        if relevant.get(d, 0) > 0:
            return 1.0 / i
    return 0.0


def ndcg_at_k(retrieved: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """Normalised DCG with gain 2^grade - 1 and discount 1 / log2(rank + 1)."""
    dcg = sum((2 ** relevant.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(retrieved[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else math.nan


def _ranked(v: RecordView) -> tuple[Sequence[str], Mapping[str, float]]:
    if v.retrieved is None or v.relevant is None:
        raise ValueError(
            "retrieval / ranking metrics need a retrieval, rag or ranking task with relevant ids"
        )
    return v.retrieved, v.relevant


def _k(v: RecordView) -> int:
    return int(v.extra.get("k", 10))


# ---------------------------------------------------------------------------------------------- grounding
def _sentence_supports(answer: str, contexts: Sequence[str]) -> list[tuple[float, str]]:
    from nanoforge.evaluation.guardrails.grounding import content_words, sentence_support, split_sentences

    out = []
    for a, b in split_sentences(answer):
        if content_words(answer[a:b]):
            out.append(sentence_support(answer[a:b], contexts))
    return out


def groundedness(answer: str, contexts: Sequence[str], threshold: float = 0.6) -> float:
    """Share of the answer's sentences its contexts support: content-word coverage >= ``threshold`` by
    the cited contexts (``[n]`` markers; all contexts without one) and every stated number present.
    NaN for an answer without content words (nothing to check). See ``guardrails.grounding``."""
    supports = _sentence_supports(answer, contexts)
    if not supports:
        return math.nan
    return sum(cov >= threshold and not why for cov, why in supports) / len(supports)


def faithfulness(answer: str, contexts: Sequence[str]) -> float:
    """Mean content-word coverage of the answer's sentences by their contexts (a soft groundedness)."""
    supports = _sentence_supports(answer, contexts)
    return sum(cov for cov, _ in supports) / len(supports) if supports else math.nan


def _grounded_view(v: RecordView) -> tuple[str, Sequence[str]] | None:
    if v.contexts is None:
        raise ValueError(
            "groundedness / faithfulness need contexts (a rag task, or contexts_field in the data)"
        )
    return None if v.abstained else (v.raw_output, v.contexts)


def _groundedness_of(v: RecordView) -> float:
    gv = _grounded_view(v)
    return math.nan if gv is None else groundedness(*gv, float(v.extra.get("grounding_threshold", 0.6)))


def _faithfulness_of(v: RecordView) -> float:
    gv = _grounded_view(v)
    return math.nan if gv is None else faithfulness(*gv)


def _abstained(v: RecordView) -> float:
    if v.abstained is None:
        raise ValueError("abstention_rate needs a rag task")
    return float(v.abstained)


def _score_triple(v: RecordView) -> tuple[float, int, int]:
    if v.logprob is None:
        raise ValueError("perplexity / bits_per_byte need a scored record (task type 'perplexity')")
    return (v.logprob, v.num_tokens, v.num_bytes)


def _choice_correct(v: RecordView) -> float:
    if v.choice_index is None or v.target_index is None:
        raise ValueError("loglik_accuracy needs a choice task (task type 'choice')")
    return float(v.choice_index == v.target_index)


def _schema_of(v: RecordView) -> Mapping[str, Any]:
    schema = v.extra.get("json_schema")
    if not isinstance(schema, Mapping):
        raise ValueError("json_schema metric needs the task's 'json_schema' (a JSON Schema object)")
    return schema


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric(
            "exact_match", lambda v: exact_match(v.prediction, v.target), mean, True, "normalised equality"
        ),
        Metric("token_f1", lambda v: token_f1(v.prediction, v.target), mean, True, "SQuAD token F1"),
        Metric("rouge_l", lambda v: rouge_l(v.prediction, v.target), mean, True, "ROUGE-L F1 (LCS)"),
        Metric("bleu", lambda v: (v.prediction, v.target), corpus_bleu, True, "sacrebleu corpus BLEU"),
        Metric("chrf", lambda v: (v.prediction, v.target), corpus_chrf, True, "sacrebleu corpus chrF"),
        Metric("loglik_accuracy", _choice_correct, mean, True, "argmax log-likelihood choice = gold"),
        Metric("perplexity", _score_triple, perplexity, False, "exp(mean token NLL)"),
        Metric("bits_per_byte", _score_triple, bits_per_byte, False, "NLL in bits per UTF-8 byte"),
        Metric("json_valid", lambda v: json_valid(v.raw_output), mean, True, "output parses as JSON"),
        Metric(
            "json_schema",
            lambda v: json_schema_conforms(v.raw_output, _schema_of(v)),
            mean,
            True,
            "output validates against the task's JSON Schema",
        ),
        Metric(
            "recall_at_k", lambda v: recall_at_k(*_ranked(v), _k(v)), nanmean, True, "relevant found in top k"
        ),
        Metric(
            "hit_rate_at_k",
            lambda v: hit_rate_at_k(*_ranked(v), _k(v)),
            mean,
            True,
            "HR@k: any relevant in top k",
        ),
        Metric("mrr", lambda v: reciprocal_rank(*_ranked(v)), mean, True, "mean reciprocal rank"),
        Metric("ndcg_at_k", lambda v: ndcg_at_k(*_ranked(v), _k(v)), nanmean, True, "nDCG@k, gain 2^g - 1"),
        Metric(
            "groundedness",
            _groundedness_of,
            nanmean,
            True,
            "share of answer sentences supported by their contexts (abstentions left out)",
        ),
        Metric(
            "faithfulness",
            _faithfulness_of,
            nanmean,
            True,
            "mean content-word coverage of answer sentences by contexts",
        ),
        Metric("abstention_rate", _abstained, mean, False, "share of questions a RAG system declined"),
    ]
}


def get_metric(name: str) -> Metric:
    """The registered metric ``name``.

    Raises:
        ValueError: for an unknown name (the message lists the accepted ones).
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; accepted: {', '.join(sorted(METRICS))}")
    return METRICS[name]
