"""Ad copy, audience profiles and SIMULATED ad impressions with a known conversion rule.

What it does: ``AdCopy`` (headline, body, call to action) and audience profiles (flat dicts such as
``{"interest": "sports", "age": 31, "device": "mobile", "price_sensitive": true}``), read from JSONL or CSV
(``read_audience``); ``simulate_impressions`` draws random copies written from small word pools and random
viewers, and labels each impression by the KNOWN rule (``rule_logit``)::

    logit = -2.0
          + 2.0  the copy (headline or body) uses a word of the viewer's interest
          + 1.2  the viewer is price-sensitive and the copy has a discount word
          - 0.8  the viewer is NOT price-sensitive and the copy has a discount word
          + 0.6  the call to action starts with a strong verb (buy, shop, get, try, book, order)
          - 0.7  the viewer is on mobile and the body is longer than 18 words
    converted ~ Bernoulli(sigmoid(logit))

so tests can check that a text-aware model learns it (held-out AUC next to the rule's own AUC). Real click
logs can replace the simulation: ``read_impressions`` reads JSONL records ``{"headline", "body",
"call_to_action", "converted": 0|1, <profile fields>...}``.
What it does not do: featurize or learn (``adconv``), or generate copy with a language model (``ads``).
Everything simulated here is synthetic: numbers measured on it say the model learns THIS rule, not that
it predicts real people.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanoforge.recommender.events import jsonl_records

#: Interest -> its words (the rule's "the copy speaks to the viewer's interest").
INTERESTS: dict[str, tuple[str, ...]] = {
    "sports": ("run", "fit", "team", "game", "sport", "train"),
    "tech": ("smart", "app", "device", "fast", "code", "wireless"),
    "home": ("cozy", "kitchen", "home", "garden", "decor", "comfort"),
    "travel": ("trip", "beach", "flight", "explore", "travel", "journey"),
    "food": ("tasty", "fresh", "recipe", "snack", "chef", "flavor"),
    "fashion": ("style", "wear", "look", "dress", "trend", "outfit"),
}
DISCOUNT_WORDS: tuple[str, ...] = ("sale", "save", "discount", "off", "deal", "free")
STRONG_VERBS: tuple[str, ...] = ("buy", "shop", "get", "try", "book", "order")
FILLER: tuple[str, ...] = (
    "new", "our", "the", "best", "quality", "today", "with", "for", "you", "everyday", "great", "made",
    "simple", "and", "all", "now", "your", "more", "every", "day",
)  # fmt: skip
CTAS: tuple[str, ...] = (
    "Buy now", "Shop now", "Get yours", "Try it today", "Book now", "Order today",
    "Learn more", "See details", "Discover more", "Read the story",
)  # fmt: skip
DEVICES = ("mobile", "desktop")
LONG_BODY_WORDS = 18
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass(frozen=True)
class AdCopy:
    """One ad: a headline, a body and a call to action."""

    headline: str
    body: str
    call_to_action: str

    def to_dict(self) -> dict[str, str]:
        return {"headline": self.headline, "body": self.body, "call_to_action": self.call_to_action}


@dataclass(frozen=True)
class Impression:
    """One ad shown to one viewer, and whether the viewer converted."""

    copy: AdCopy
    profile: dict[str, Any]
    converted: int


def words(text: str) -> list[str]:
    """Lower-case words of ``text``: ``"Save 20% on Fresh snacks!" -> ["save", "20", "on", "fresh", "snacks"]``."""
    return _WORD.findall(text.lower())


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y")


def rule_logit(copy: AdCopy, profile: dict[str, Any]) -> float:
    """The simulator's KNOWN rule (see the module docstring) as a logit."""
    text = set(words(copy.headline)) | set(words(copy.body))
    logit = -2.0
    if text & set(INTERESTS.get(str(profile.get("interest", "")), ())):
        logit += 2.0
    if text & set(DISCOUNT_WORDS):
        logit += 1.2 if _truthy(profile.get("price_sensitive", False)) else -0.8
    cta = words(copy.call_to_action)
    if cta and cta[0] in STRONG_VERBS:
        logit += 0.6
    if str(profile.get("device", "")) == "mobile" and len(words(copy.body)) > LONG_BODY_WORDS:
        logit -= 0.7
    return logit


def rule_probability(copy: AdCopy, profile: dict[str, Any]) -> float:
    """sigmoid(rule_logit): the probability the simulated viewer converts."""
    return 1.0 / (1.0 + math.exp(-rule_logit(copy, profile)))


def random_profile(rng: np.random.Generator) -> dict[str, Any]:
    """A random viewer: interest, age, device, price sensitivity."""
    return {
        "interest": str(rng.choice(list(INTERESTS))),
        "age": int(rng.integers(18, 70)),
        "device": str(rng.choice(DEVICES, p=[0.65, 0.35])),
        "price_sensitive": bool(rng.random() < 0.5),
    }


def _sentence(rng: np.random.Generator, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.22:
            out.append(str(rng.choice(INTERESTS[str(rng.choice(list(INTERESTS)))])))
        elif r < 0.30:
            out.append(str(rng.choice(DISCOUNT_WORDS)))
        else:
            out.append(str(rng.choice(FILLER)))
    return " ".join(out)


def random_copy(rng: np.random.Generator) -> AdCopy:
    """A random ad written from the word pools (3-6 word headline, 6-30 word body, one of ``CTAS``)."""
    head = _sentence(rng, int(rng.integers(3, 7)))
    body = _sentence(rng, int(rng.integers(6, 31)))
    return AdCopy(head[:1].upper() + head[1:], body[:1].upper() + body[1:] + ".", str(rng.choice(CTAS)))


def simulate_impressions(n: int, seed: int = 0, n_copies: int | None = None) -> list[Impression]:
    """``n`` SIMULATED impressions: ``n_copies`` random ads (default n // 20) shown to random viewers."""
    if n <= 0:
        raise ValueError(f"n={n!r} must be a positive number of impressions")
    rng = np.random.default_rng(seed)
    copies = [random_copy(rng) for _ in range(max(1, n_copies or n // 20))]
    out = []
    for _ in range(n):
        copy, profile = copies[int(rng.integers(len(copies)))], random_profile(rng)
        out.append(Impression(copy, profile, int(rng.random() < rule_probability(copy, profile))))
    return out


# ----------------------------------------------------------------------------------------------- files


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) of a JSONL or CSV file; bad lines are ValueErrors naming file:line."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [(f"{path}:{i + 2}", dict(row)) for i, row in enumerate(csv.DictReader(f))]
    if suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported file extension {path.suffix!r}; accepted: .jsonl, .csv")
    return jsonl_records(path)


def _profile(rec: dict[str, Any], where: str) -> dict[str, Any]:
    bad = {k: v for k, v in rec.items() if isinstance(v, (dict, list))}
    if bad:
        raise ValueError(f"{where}: profile fields must be strings, numbers or booleans; got {bad}")
    return {str(k): v for k, v in rec.items() if v not in (None, "")}


def read_audience(path: str | Path) -> list[dict[str, Any]]:
    """Audience profiles from JSONL (one object per line) or CSV (header row); at least one.

    Any flat field is accepted and becomes a feature; the simulated rule reads ``interest`` (one of
    ``INTERESTS``), ``device`` (mobile / desktop) and ``price_sensitive`` (true / false).

    Raises:
        ValueError: unsupported extension, bad record, or no profiles. OSError: unreadable file.
    """
    p = Path(path)
    profiles = [_profile(rec, where) for where, rec in _records(p)]
    if not profiles:
        raise ValueError(f"{p}: no audience profiles (expected JSONL objects or CSV rows)")
    return profiles


def read_impressions(path: str | Path) -> list[Impression]:
    """Real click logs: JSONL/CSV records with headline, body, call_to_action, converted (0/1) + profile fields.

    Raises:
        ValueError: a record without the copy fields or with ``converted`` other than 0/1; no records.
    """
    p = Path(path)
    out = []
    for where, rec in _records(p):
        missing = [k for k in ("headline", "body", "call_to_action", "converted") if k not in rec]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; an impression needs headline, body, "
                             "call_to_action, converted (0/1) and profile fields")  # fmt: skip
        label = str(rec.pop("converted")).strip().lower()
        if label not in ("0", "1", "true", "false"):
            raise ValueError(f"{where}: converted={label!r}; accepted: 0, 1, true, false")
        copy = AdCopy(str(rec.pop("headline")), str(rec.pop("body")), str(rec.pop("call_to_action")))
        out.append(Impression(copy, _profile(rec, where), int(label in ("1", "true"))))
    if not out:
        raise ValueError(f"{p}: no impressions")
    return out
