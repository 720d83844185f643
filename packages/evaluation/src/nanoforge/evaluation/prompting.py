"""Prompting: Jinja templates, few-shot example selection, chain-of-thought answer extraction, JSON-output
prompts and a log-likelihood classifier.

- :class:`PromptTemplate` renders a Jinja template in a *sandboxed* environment with ``StrictUndefined``
  (a missing variable is an error, not an empty string) and exposes its variables and a content hash.
- Few-shot selectors (registry :data:`SELECTORS`): ``fixed`` (the first k of the pool), ``random`` (seeded)
  and ``similar`` (top-k cosine under a pluggable embed function: the Embed RPC, or the bag-of-words
  :func:`bag_of_words_embed` that needs no model).
- Answer extractors (registry :data:`EXTRACTORS`) for chain-of-thought outputs: ``regex`` (last match,
  group 1), ``last_number``, ``label`` (the label mentioned last), ``first_line``, ``none``.
- JSON prompts: :func:`json_instruction` words the schema for the prompt; the harness also passes it as
  ``response_format`` to servers with schema-constrained decoding.
- :class:`LogLikelihoodClassifier` picks the label whose continuation has the highest log-likelihood
  under a score function (the Score RPC), optionally normalised per token or per byte.

    >>> PromptTemplate("Q: {{ q }}\\nA:").render(q="2+2?")
    'Q: 2+2?\\nA:'
    >>> extract_answer("... so 3 + 4 = 7. The answer is 7.", "last_number")
    '7'

What it deliberately does not do: call any backend itself (the classifier takes a score function), or
render chat templates (servers do that from chat messages).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox
import numpy as np

COT_INSTRUCTION = "Let's think step by step, then give the final answer after 'Answer:'."

_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
)


class PromptTemplate:
    """A Jinja prompt template (sandboxed, strict about undefined variables).

    Args:
        source: the template text, e.g. ``"Q: {{ question }}\\nA:"``.
        name: a label for reports.

    Raises:
        ValueError: if the template does not parse.
    """

    def __init__(self, source: str, name: str = "") -> None:
        try:
            ast = _ENV.parse(source)
            self._template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(
                f"bad prompt template {name or source[:40]!r}: {exc.message} (line {exc.lineno})"
            ) from None
        self.source = source
        self.name = name
        self.variables: frozenset[str] = frozenset(jinja2.meta.find_undeclared_variables(ast))

    @property
    def hash(self) -> str:
        """sha256 of the template text (first 16 hex digits): what the manifest records."""
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()[:16]

    def render(self, variables: Mapping[str, Any] | None = None, **kw: Any) -> str:
        """Render with ``variables`` and keyword arguments.

        Raises:
            ValueError: naming a variable the template uses but was not given.
        """
        values = {**(variables or {}), **kw}
        missing = sorted(self.variables - set(values))
        if missing:
            raise ValueError(
                f"prompt template {self.name or self.hash!r} needs variables {missing}; given: {sorted(values)}"
            )
        try:
            return self._template.render(values)
        except jinja2.exceptions.SecurityError as exc:
            raise ValueError(f"prompt template {self.name or self.hash!r} is unsafe: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise ValueError(f"prompt template {self.name or self.hash!r}: {exc.message}") from None


# ---------------------------------------------------------------------------------------------- few-shot
EmbedFn = Callable[[Sequence[str]], np.ndarray]

_WORD = re.compile(r"\w+")


def bag_of_words_embed(texts: Sequence[str], dim: int = 1024) -> np.ndarray:
    """Hashed bag-of-words vectors (crc32 of each lower-cased word mod ``dim``), L2-normalised.

    Cosine of two such vectors is the bag-of-words cosine (up to rare hash collisions).
    """
    out = np.zeros((len(texts), dim), dtype=np.float32)  # (N, dim)
    for i, text in enumerate(texts):
        for word in _WORD.findall(text.lower()):
            out[i, zlib.crc32(word.encode()) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)  # (N, 1)
    return out / np.where(norms == 0, 1.0, norms)


def memoized(embed: EmbedFn) -> EmbedFn:
    """Wrap ``embed`` so every distinct text is embedded once (similar-selection re-embeds the pool per record)."""
    seen: dict[str, np.ndarray] = {}

    def cached(texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in seen]
        if missing:
            seen.update(zip(missing, embed(missing), strict=True))
        return np.stack([seen[t] for t in texts])  # (N, D)

    return cached


@dataclass
class FewShotConfig:
    """How examples are chosen: ``mode`` in SELECTORS, ``k`` examples, ``seed`` for ``random``,
    ``query_field`` is the record field that ``similar`` compares."""

    k: int = 0
    mode: str = "fixed"
    seed: int = 0
    query_field: str = "input"


Selector = Callable[
    [Mapping[str, Any], Sequence[Mapping[str, Any]], FewShotConfig, "EmbedFn | None"], list[int]
]


def _select_fixed(
    row: Mapping[str, Any], pool: Sequence[Mapping[str, Any]], cfg: FewShotConfig, _e: Any
) -> list[int]:
    return list(range(min(cfg.k, len(pool))))


def _select_random(
    row: Mapping[str, Any], pool: Sequence[Mapping[str, Any]], cfg: FewShotConfig, _e: Any
) -> list[int]:
    # Seed with the config seed and the record's query text, so each record gets its own but reproducible draw.
    text = str(row.get(cfg.query_field, ""))
    rng = random.Random(f"{cfg.seed}:{text}")
    return rng.sample(range(len(pool)), min(cfg.k, len(pool)))


def _select_similar(
    row: Mapping[str, Any], pool: Sequence[Mapping[str, Any]], cfg: FewShotConfig, embed: EmbedFn | None
) -> list[int]:
    embed = embed or bag_of_words_embed
    texts = [str(ex.get(cfg.query_field, "")) for ex in pool]
    vectors = embed([str(row.get(cfg.query_field, "")), *texts])  # (1 + P, D)
    sims = vectors[1:] @ vectors[0]  # (P,)
    order = sorted(range(len(pool)), key=lambda i: (-float(sims[i]), i))
    return order[: min(cfg.k, len(pool))]


SELECTORS: dict[str, Selector] = {
    "fixed": _select_fixed,
    "random": _select_random,
    "similar": _select_similar,
}


def select_examples(
    row: Mapping[str, Any],
    pool: Sequence[Mapping[str, Any]],
    cfg: FewShotConfig,
    embed: EmbedFn | None = None,
) -> list[Mapping[str, Any]]:
    """The few-shot examples for ``row``, never ``row`` itself (matched by equality).

    Raises:
        ValueError: on an unknown mode or a negative k.
    """
    if cfg.mode not in SELECTORS:
        raise ValueError(f"unknown few-shot mode {cfg.mode!r}; accepted: {', '.join(sorted(SELECTORS))}")
    if cfg.k < 0:
        raise ValueError(f"few-shot k must be >= 0, got {cfg.k}")
    if cfg.k == 0:
        return []
    candidates = [ex for ex in pool if ex != row]
    return [candidates[i] for i in SELECTORS[cfg.mode](row, candidates, cfg, embed)]


def build_prompt(
    template: PromptTemplate,
    row: Mapping[str, Any],
    examples: Sequence[Mapping[str, Any]] = (),
    *,
    target_field: str = "target",
    separator: str = "\n\n",
    cot: bool = False,
) -> str:
    """Render ``row``; few-shot examples come first, each rendered with the same template plus its target.

    A template that uses the ``examples`` variable lays them out itself and gets them as a list of rows.
    With ``cot`` the chain-of-thought instruction is appended.
    """
    if "examples" in template.variables:
        text = template.render(row, examples=list(examples))
    else:
        shots = [template.render(ex) + " " + str(ex.get(target_field, "")) for ex in examples]
        text = separator.join([*shots, template.render(row)])
    return f"{text}\n{COT_INSTRUCTION}\n" if cot else text


# ---------------------------------------------------------------------------------------------- answers
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _extract_regex(text: str, pattern: str | None = None, **_: Any) -> str:
    if not pattern:
        raise ValueError("the regex extractor needs a 'pattern' (with one group)")
    matches = list(re.finditer(pattern, text))
    if not matches:
        return ""
    m = matches[-1]
    return (m.group(1) if m.groups() else m.group(0)).strip()


def _extract_last_number(text: str, **_: Any) -> str:
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else ""


def _extract_label(text: str, labels: Sequence[str] = (), **_: Any) -> str:
    if not labels:
        raise ValueError("the label extractor needs the task's 'labels'")
    best, best_pos = "", -1
    for label in labels:
        for m in re.finditer(rf"(?<!\w){re.escape(label)}(?!\w)", text, flags=re.IGNORECASE):
            if m.start() > best_pos:
                best, best_pos = label, m.start()
    return best


def _extract_first_line(text: str, **_: Any) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0].strip() if stripped else ""


EXTRACTORS: dict[str, Callable[..., str]] = {
    "none": lambda text, **_: text.strip(),
    "regex": _extract_regex,
    "last_number": _extract_last_number,
    "label": _extract_label,
    "first_line": _extract_first_line,
}


def extract_answer(text: str, method: str = "none", **options: Any) -> str:
    """The final answer in a model output.

    Args:
        text: the model output.
        method: a key of :data:`EXTRACTORS`.
        options: ``pattern`` for ``regex``; ``labels`` for ``label``.

    Raises:
        ValueError: on an unknown method or a missing option.
    """
    if method not in EXTRACTORS:
        raise ValueError(f"unknown answer extractor {method!r}; accepted: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[method](text, **options)


# ---------------------------------------------------------------------------------------------- json
def json_instruction(schema: Mapping[str, Any]) -> str:
    """A prompt suffix asking for JSON that follows ``schema`` (shown compactly)."""
    return "Reply with only a JSON value that follows this JSON Schema:\n" + json.dumps(
        schema, sort_keys=True
    )


def response_format_for(schema: Mapping[str, Any]) -> dict[str, str]:
    """The ``response_format`` argument of the inference client for schema-constrained decoding."""
    return {"json_schema": json.dumps(schema, sort_keys=True)}


# ---------------------------------------------------------------------------------------------- classifier
ScoreFn = Callable[[str, Sequence[str]], Awaitable[Sequence[tuple[float, int]]]]

NORMALIZERS: dict[str, Callable[[float, int, str], float]] = {
    "none": lambda lp, _n, _t: lp,
    "per_token": lambda lp, n, _t: lp / max(n, 1),
    "per_byte": lambda lp, _n, text: lp / max(len(text.encode("utf-8")), 1),
}


@dataclass
class Classification:
    """The picked label, its index, and every label's (normalised) score."""

    label: str
    index: int
    scores: list[float]
    num_tokens: list[int]


class LogLikelihoodClassifier:
    """A prompt-driven classifier: score ``prefix + label`` for every label, pick the most likely.

    Args:
        template: renders the context from a record.
        labels: the label texts.
        score: ``async score(context, continuations) -> [(logprob, num_tokens), ...]`` (the Score RPC).
        label_prefix: put before each label (a space, so " positive" is tokenised like running text).
        normalize: a key of :data:`NORMALIZERS`; length normalisation for labels of different lengths.
    """

    def __init__(
        self,
        template: PromptTemplate,
        labels: Sequence[str],
        score: ScoreFn,
        *,
        label_prefix: str = " ",
        normalize: str = "none",
    ) -> None:
        if len(labels) < 2:
            raise ValueError(f"a classifier needs >= 2 labels, got {list(labels)!r}")
        if normalize not in NORMALIZERS:
            raise ValueError(f"unknown normalize {normalize!r}; accepted: {', '.join(sorted(NORMALIZERS))}")
        self.template, self.labels, self.score = template, list(labels), score
        self.label_prefix, self.normalize = label_prefix, normalize

    async def classify(self, row: Mapping[str, Any]) -> Classification:
        """Score every label after the rendered record and return the best."""
        return await self.classify_context(self.template.render(row))

    async def classify_context(self, context: str) -> Classification:
        """Score every label after an already rendered context (e.g. with few-shot examples before it)."""
        conts = [self.label_prefix + label for label in self.labels]
        raw = await self.score(context, conts)
        norm = NORMALIZERS[self.normalize]
        scores = [norm(lp, n, c) for (lp, n), c in zip(raw, conts, strict=True)]
        best = max(range(len(scores)), key=lambda i: scores[i] if not math.isnan(scores[i]) else -math.inf)
        return Classification(self.labels[best], best, scores, [n for _, n in raw])
