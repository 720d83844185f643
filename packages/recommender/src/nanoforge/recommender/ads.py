"""The ad-copy studio: generate ad copies with a language model, predict their conversion, rank, explain.

What it does, top to bottom (``run_studio``):

1. asks a ``TextGenerator`` (an InferenceService, ``textgen``) for N copies of the product's ad, each
   constrained to the JSON shape ``ad_schema`` (``{"headline", "body", "call_to_action"}``); a sample
   that is not that shape (for example cut off by the token budget) is kept aside with its reason;
2. predicts each copy's conversion rate for the audience with the text-aware ``AdConversionModel``
   (``adconv``: mean P(convert | copy, viewer) over the audience's profiles);
3. ranks the copies by that rate;
4. explains the top copy: the features and words that move its predicted logit most (weight x feature,
   averaged over the audience), plus a rationale written by the language model, constrained to
   ``rationale_schema`` and told those attributions.

The conversion model is trained on SIMULATED impressions unless real click logs are given (``adsim``):
its predictions say how the copy fares under the simulator's rule, not with real people.
What it does not do: train the conversion model (``adconv``) or talk gRPC itself (``textgen``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nanoforge.recommender.adconv import AdConversionModel
from nanoforge.recommender.adsim import AdCopy
from nanoforge.recommender.textgen import TextGenerator

MAX_CANDIDATES = 16
MAX_PRODUCT_CHARS = 500
JSON_OVERHEAD = 50  # characters of {"headline":"","body":"","call_to_action":""} plus a little slack


def ad_schema(max_new_tokens: int) -> dict[str, Any]:
    """The ad's JSON shape, with string lengths that fit ``max_new_tokens``.

    Every token is at least one character, so when the strings' total maximum plus the JSON punctuation
    fits the token budget, constrained decoding always closes the object (an escape such as ``\\"`` takes
    two characters, so a sample full of them can still be cut off: it is then rejected and reported).
    Example: 320 tokens -> headline <= 67, body <= 162, call_to_action <= 29 characters.

    Raises:
        ValueError: a budget under 100 tokens (too small for a useful ad).
    """
    if max_new_tokens < 100:
        raise ValueError(f"max_new_tokens={max_new_tokens} is too small for an ad; accepted: >= 100")
    chars = max_new_tokens - JSON_OVERHEAD
    limits = {"headline": int(chars * 0.25), "body": int(chars * 0.6), "call_to_action": int(chars * 0.11)}
    return {
        "type": "object",
        "properties": {k: {"type": "string", "minLength": 1, "maxLength": v} for k, v in limits.items()},
        "required": list(limits),
        "additionalProperties": False,
    }


def rationale_schema(max_new_tokens: int) -> dict[str, Any]:
    """``{"rationale": "..."}`` with a length that fits ``max_new_tokens`` (see ``ad_schema``)."""
    return {
        "type": "object",
        "properties": {
            "rationale": {"type": "string", "minLength": 1, "maxLength": max(20, max_new_tokens - 20)}
        },
        "required": ["rationale"],
        "additionalProperties": False,
    }


@dataclass
class Candidate:
    """One generated ad and its predicted conversion rate over the audience."""

    copy: AdCopy
    conversion: float
    rank: int = 0


@dataclass
class StudioResult:
    """Everything the studio produced: ranked candidates, rejected samples, the top one's explanation."""

    product: str
    audience_size: int
    candidates: list[Candidate]
    rejected: list[dict[str, str]]
    top_features: list[tuple[str, float]] = field(default_factory=list)
    top_words: list[tuple[str, float]] = field(default_factory=list)
    rationale: str = ""
    rationale_note: str = ""  # why the rationale is empty, when it is
    conversion_model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "audience_size": self.audience_size,
            "candidates": [
                {"rank": c.rank, "conversion": c.conversion, **c.copy.to_dict()} for c in self.candidates
            ],
            "rejected": self.rejected,
            "explanation": {
                "features": [{"feature": f, "contribution": v} for f, v in self.top_features],
                "words": [{"word": w, "contribution": v} for w, v in self.top_words],
                "rationale": self.rationale,
                "rationale_note": self.rationale_note,
            },
            "conversion_model": self.conversion_model,
        }


def audience_summary(audience: list[dict[str, Any]], max_values: int = 8) -> str:
    """``"3 viewers; device: mobile 2, desktop 1; interest: sports 3"`` (fields with few distinct values)."""
    parts = [f"{len(audience)} viewers"]
    keys = sorted({k for p in audience for k in p})
    for k in keys:
        counts = Counter(str(p[k]).lower() for p in audience if k in p)
        if len(counts) <= max_values:
            parts.append(f"{k}: " + ", ".join(f"{v} {n}" for v, n in counts.most_common()))
    return "; ".join(parts)


def describe(feature: str) -> str:
    """Readable feature: ``"interest=sports|w:run"`` -> ``"viewers with interest=sports x the word 'run'"``."""
    left, sep, right = feature.rpartition("|")
    kind, _, value = right.partition(":")
    copy_part = {
        "w": f"the word '{value}'",
        "cta0": f"a call to action starting with '{value}'",
        "blen": f"a body of about {value} words",
    }.get(kind, right)
    if sep:
        return f"viewers with {left} x {copy_part}"
    return copy_part if kind in ("w", "cta0", "blen") else f"viewers with {right}"


def ad_messages(product: str, audience: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The chat prompt that asks for one ad as JSON."""
    return [
        {
            "role": "user",
            "content": (
                f"Product: {product}\nAudience: {audience_summary(audience)}\n"
                'Write one ad as JSON with keys "headline", "body" and "call_to_action".'
            ),
        },
    ]


def parse_copy(text: str) -> AdCopy:
    """The ``AdCopy`` of a generated JSON text.

    Raises:
        ValueError: not JSON, not an object, or a key missing / empty / not a string.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    values = {}
    for key in ("headline", "body", "call_to_action"):
        v = data.get(key)
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"key {key!r} missing or not a non-empty string")
        values[key] = v.strip()
    return AdCopy(**values)


def run_studio(
    product: str,
    audience: list[dict[str, Any]],
    generator: TextGenerator,
    model: AdConversionModel,
    *,
    n: int = 4,
    seed: int | None = 0,
    temperature: float = 0.9,
    max_new_tokens: int = 200,
    explain_top: int = 8,
) -> StudioResult:
    """Generate ``n`` copies, rank them by predicted conversion over ``audience``, explain the best.

    Raises:
        ValueError: empty / too long product, ``n`` out of 1..16, empty audience, or no sample was a
            valid ad (the message lists why each was rejected).
    """
    product = product.strip()
    if not product or len(product) > MAX_PRODUCT_CHARS:
        raise ValueError(f"product must be 1..{MAX_PRODUCT_CHARS} characters, got {len(product)}")
    if not 1 <= n <= MAX_CANDIDATES:
        raise ValueError(f"n={n} candidates is out of range; accepted: 1..{MAX_CANDIDATES}")
    if not audience:
        raise ValueError("the audience is empty; give at least one viewer profile")
    samples = generator.generate_json(
        ad_messages(product, audience), ad_schema(max_new_tokens), n=n, max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed,
    )  # fmt: skip
    candidates, rejected = [], []
    for s in samples:
        try:
            copy = parse_copy(s.text)
        except ValueError as e:
            rejected.append({"text": s.text, "reason": f"{e} (finish reason {s.finish_reason})"})
            continue
        candidates.append(Candidate(copy, model.audience_rate(copy, audience)))
    if not candidates:
        reasons = "; ".join(r["reason"] for r in rejected)
        raise ValueError(f"none of the {len(samples)} generated samples was a valid ad: {reasons}")
    candidates.sort(key=lambda c: -c.conversion)  # stable: ties keep generation order
    for rank, c in enumerate(candidates, 1):
        c.rank = rank
    top = candidates[0]
    feats, words = model.attributions(top.copy, audience)
    result = StudioResult(
        product, len(audience), candidates, rejected, feats[:explain_top], words[:explain_top],
        conversion_model=dict(model.meta),
    )  # fmt: skip
    result.rationale, result.rationale_note = _rationale(
        product, top, result.top_features, generator, seed, max_new_tokens
    )
    return result


def _rationale(
    product: str,
    top: Candidate,
    feats: list[tuple[str, float]],
    generator: TextGenerator,
    seed: int | None,
    max_new_tokens: int,
) -> tuple[str, str]:
    drivers = "; ".join(f"{describe(f)} ({v:+.2f})" for f, v in feats[:3])
    messages = [
        {
            "role": "user",
            "content": (
                f"Ad for {product}: {top.copy.headline} {top.copy.body} {top.copy.call_to_action}\n"
                f"Predicted conversion {top.conversion:.3f}; top factors: {drivers}.\n"
                'Why does this ad work? Answer as JSON {"rationale": "..."}.'
            ),
        },
    ]
    budget = max_new_tokens // 2  # a shorter answer than an ad: its prompt is longer
    (sample,) = generator.generate_json(
        messages, rationale_schema(budget), n=1, max_new_tokens=budget, temperature=0.0, seed=seed
    )
    try:
        data = json.loads(sample.text)
        return str(data["rationale"]).strip(), ""
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return (
            "",
            f"the generated rationale was not valid JSON ({type(e).__name__}, finish {sample.finish_reason})",
        )
