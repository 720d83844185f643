"""PII and secret detection with checksums, and redaction with typed placeholders.

Detectors (one function each, registered in ``DETECTORS``): e-mail addresses (with a TLD check, so
``x@w.shape`` in code is not an address), phone numbers in international and common national formats
(digit count, grouping and context checks instead of a bare digit-run regex), payment cards (13-19 digits,
known IIN prefix AND Luhn checksum), IBANs (country length table AND ISO 13616 mod-97), and secrets
(AWS ``AKIA``/``ASIA`` key ids, GitHub ``ghp_``-family and fine-grained tokens, ``sk-`` style API keys,
Slack / Google keys, PEM private-key headers, ``password = ...`` assignments, and generic high-entropy
tokens above a Shannon-entropy threshold). Overlapping matches are resolved by kind priority, then length.

What it deliberately does not do: names, addresses or other free-text PII (that needs an NER model), or
national-ID formats; phone validation is structural, not a numbering-plan database like libphonenumber.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

from nanoforge.evaluation.guardrails.base import (
    Action,
    Finding,
    RailResult,
    check_action,
    redact_spans,
    timed,
)

Span = tuple[int, int]

# --------------------------------------------------------------------------------------------- checksums


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check of a digit string.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return len(digits) > 0 and total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters -> 10..35, the number mod 97 == 1.

    >>> iban_valid("GB82WEST12345698765432"), iban_valid("GB82WEST12345698765433")
    (True, False)
    """
    s = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", s):
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def shannon_entropy(s: str) -> float:
    """Bits per character of the character distribution of ``s``.

    >>> shannon_entropy("aaaa"), round(shannon_entropy("abcd"), 2)
    (0.0, 2.0)
    """
    if not s:
        return 0.0
    n = len(s)
    return sum(c / n * math.log2(n / c) for c in Counter(s).values())


# ------------------------------------------------------------------------------------------------ email

#: Common generic TLDs; any two-letter alphabetic TLD (country codes) is accepted as well.
GENERIC_TLDS = frozenset(
    re.split(
        r"\s+",
        """
    com org net edu gov mil int info biz name pro io ai dev app co me tv xyz online site tech cloud email
    mail shop store blog news page live world global group company solutions systems network museum
""".strip(),
    )
)
_EMAIL = re.compile(
    r"(?<![\w.%+\-@])([A-Za-z0-9](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9])?)@"
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24}))(?![\w\-@(])"
)


def find_emails(text: str) -> list[Span]:
    """E-mail addresses whose TLD is a known generic one or two letters, same case throughout.

    >>> find_emails("ping ana.lopez@uni.edu, not y = x@w.shape or git log@HEAD")
    [(5, 22)]
    """
    spans = []
    for m in _EMAIL.finditer(text):
        tld = m.group(3)
        if tld != tld.lower() and tld != tld.upper():
            continue  # mixedCase attribute access, e.g. q@k.mT
        if tld.lower() in GENERIC_TLDS or len(tld) == 2:
            spans.append((m.start(), m.end()))
    return spans


# ------------------------------------------------------------------------------------------------ phone

_PHONE = re.compile(r"(?<![\w+\-./])(?:\+|00)?\(?\d[\d \-.()]{5,20}\d(?![\w\-]|\.\d)")
_PHONE_CONTEXT = re.compile(r"(?i)\b(?:tel|phone|call|mobile|cell|fax|whatsapp|sms|text me|ring)\b\W{0,4}$")
_DATE_LIKE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")


def find_phones(text: str) -> list[Span]:
    """Phone numbers: 7-15 digits (E.164), plus a ``+``/``00`` prefix, phone-like grouping or a keyword before.

    Rejected: dates, IPv4-like dotted quads, version strings, bare digit runs without a phone keyword.

    >>> find_phones("Call +44 20 7946 0958 or (415) 555-2671; build 2024-01-15, id 4155552671")
    [(5, 21), (25, 39)]
    """
    spans = []
    for m in _PHONE.finditer(text):
        s = m.group(0).rstrip(" -.(")
        start, end = m.start(), m.start() + len(s)
        digits = re.sub(r"\D", "", s)
        international = s.startswith("+") or s.startswith("00")
        if not 7 <= len(digits) <= 15 or s.count("(") != s.count(")"):
            continue
        if _DATE_LIKE.fullmatch(s) or re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", s):
            continue
        groups = [g for g in re.split(r"[ \-.()]+", s.lstrip("+")) if g]
        separators = set(re.findall(r"[ \-.]", s))
        has_context = bool(_PHONE_CONTEXT.search(text[max(0, start - 20) : start]))
        thousands = len(groups) >= 2 and len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])
        if not international and separators <= {" ", "."} and thousands and not has_context:
            continue  # 1 200 000 / 12.500.000: thousands separators, not a phone
        phone_mix = ("(" in s or international) and separators <= {" ", "-"}
        if len(separators) > 1 and not phone_mix:
            continue  # "1.2 3-4" style mixes are not phone formatting
        if international and len(digits) >= 8:
            spans.append((start, end))
        elif len(groups) >= 2 and all(len(g) <= 5 for g in groups) and len(groups[-1]) >= 3:
            if "(" in s or len(groups) >= 3 or has_context:
                spans.append((start, end))
        elif has_context and len(digits) >= 7:
            spans.append((start, end))
    return spans


# ------------------------------------------------------------------------------------------------- card

_CARD = re.compile(r"(?<![\w\-.])\d(?:[ \-]?\d){12,18}(?![\w\-]|\.\d)")
#: Issuer identification number prefixes (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro).
_IIN = re.compile(
    r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|6(?:011|5|4[4-9]|2)|35(?:2[89]|[3-8])|3(?:0[0-5]|[68])|5[06-8]|6\d"
)


#: How printed card numbers are grouped: 4x4 (most), 4x4+3 (19 digits), 4-6-5 (Amex), 4-6-4 (Diners).
_CARD_GROUPINGS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4)}
_IBAN_PREFIX = re.compile(r"(?<![\w])[A-Z]{2}\d{2} $")


def find_cards(text: str) -> list[Span]:
    """Payment card numbers: 13-19 digits, compact or grouped as printed, a known IIN prefix, and Luhn valid.

    >>> find_cards("card 4111 1111 1111 1111, order 4111 1111 1111 1112")
    [(5, 24)]
    """
    spans = []
    for m in _CARD.finditer(text):
        s = m.group(0)
        if len(set(re.findall(r"[ \-]", s))) > 1 or _IBAN_PREFIX.search(
            text[max(0, m.start() - 6) : m.start()]
        ):
            continue
        groups = tuple(len(g) for g in re.split(r"[ \-]", s))
        if len(groups) > 1 and groups not in _CARD_GROUPINGS:
            continue
        digits = re.sub(r"\D", "", s)
        if _IIN.match(digits) and luhn_valid(digits):
            spans.append((m.start(), m.end()))
    return spans


# ------------------------------------------------------------------------------------------------- IBAN

#: IBAN length per country (ISO 13616 registry, the common subset); others must be 15-34 characters.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28, "CZ": 24,
    "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23, "GR": 27, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "LB": 28, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PT": 25, "QA": 29,
    "RO": 24, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26, "UA": 29,
}  # fmt: skip
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w])")


def find_ibans(text: str) -> list[Span]:
    """IBANs, printed compact or in groups of four: the country's length and the mod-97 check must hold.

    >>> find_ibans("pay to DE89 3704 0044 0532 0130 00 (not DE89 3704 0044 0532 0130 01)")
    [(7, 34)]
    """
    spans = []
    for m in _IBAN.finditer(text):
        compact = m.group(0).replace(" ", "")
        expected = IBAN_LENGTHS.get(compact[:2])
        if (len(compact) == expected if expected else 15 <= len(compact) <= 34) and iban_valid(compact):
            spans.append((m.start(), m.end()))
    return spans


# ----------------------------------------------------------------------------------------------- secrets

_SECRET_PATTERNS = [
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),  # AWS access key id
    re.compile(r"(?<!\w)gh[pousr]_[A-Za-z0-9]{36,255}(?!\w)"),  # GitHub classic tokens
    re.compile(r"(?<!\w)github_pat_[A-Za-z0-9_]{60,255}(?!\w)"),  # GitHub fine-grained tokens
    re.compile(
        r"(?<![\w\-])sk-(?:[a-z]{2,8}-)?(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{20,}"
    ),
    re.compile(r"(?<!\w)xox[abprs]-[A-Za-z0-9\-]{10,}(?!\w)"),  # Slack
    re.compile(r"(?<!\w)AIza[A-Za-z0-9_\-]{35}(?![\w\-])"),  # Google API key
    re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
]
_ASSIGNMENT = re.compile(
    r"(?i)\b(?:password|passwd|pwd|secret|api[_\-]?key|access[_\-]?token|auth[_\-]?token|client[_\-]?secret)"
    r"\b[\"']?\s*[:=]\s*[\"']?([^\s\"',;]{8,})"
)
_TOKEN = re.compile(r"(?<![\w+/=\-])[A-Za-z0-9+/_\-]{20,128}={0,2}(?![\w+/=\-])")


def looks_random(token: str, min_entropy: float) -> bool:
    """A generic secret candidate: letters, digits and mixed case, no long word-like runs, high entropy.

    >>> looks_random("q8Zr2LmX0vTb9WcE4yHs", 4.0), looks_random("calculate_total_price_with_discount", 4.0)
    (True, False)
    """
    if not (re.search(r"\d", token) and re.search(r"[a-z]", token) and re.search(r"[A-Z]", token)):
        return False
    if len(re.findall(r"[a-z]{4,}", token)) >= 2:
        return False  # identifiers made of words
    return shannon_entropy(token) >= min_entropy


def find_secrets(text: str, min_entropy: float = 4.0) -> list[Span]:
    """Known key formats, ``password = value`` assignments, and generic tokens above ``min_entropy`` bits/char.

    >>> text = "key AKIAIOSFODNN7EXAMPLE; sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"
    >>> [text[a:b] for a, b in find_secrets(text)]
    ['AKIAIOSFODNN7EXAMPLE']
    """
    spans = [(m.start(), m.end()) for p in _SECRET_PATTERNS for m in p.finditer(text)]
    for m in _ASSIGNMENT.finditer(text):
        value = m.group(1)
        if not re.fullmatch(r"\*+|x+|<[^>]*>|\$\{?\w+\}?|your\w*|changeme|example\w*", value, re.IGNORECASE):
            spans.append((m.start(1), m.end(1)))
    for m in _TOKEN.finditer(text):
        if looks_random(m.group(0), min_entropy):
            spans.append((m.start(), m.end()))
    return spans


# ----------------------------------------------------------------------------------------------- the rail

#: kind -> (detector, placeholder). The order is the priority used when matches overlap.
DETECTORS: dict[str, tuple[Callable[[str], list[Span]], str]] = {
    "secret": (find_secrets, "[SECRET]"),
    "card": (find_cards, "[CARD]"),
    "iban": (find_ibans, "[IBAN]"),
    "email": (find_emails, "[EMAIL]"),
    "phone": (find_phones, "[PHONE]"),
}


def detect_pii(text: str, kinds: Sequence[str] = tuple(DETECTORS), min_entropy: float = 4.0) -> list[Finding]:
    """Non-overlapping findings of the requested kinds (priority = ``DETECTORS`` order, then longer span).

    >>> [(f.kind, f.start, f.end) for f in detect_pii("a@b.io or +1 415 555 2671")]
    [('email', 0, 6), ('phone', 10, 25)]
    """
    priority = {k: i for i, k in enumerate(DETECTORS)}
    candidates: list[tuple[int, int, int, str]] = []
    for kind in kinds:
        detector = DETECTORS[kind][0]
        found = find_secrets(text, min_entropy) if kind == "secret" else detector(text)
        candidates += [(priority[kind], -(b - a), a, kind) for a, b in found]
    taken: list[Finding] = []
    claimed = bytearray(len(text))  # 1 where a kept finding already covers the character
    for _, neg_len, start, kind in sorted(candidates):
        end = start - neg_len
        if not any(claimed[start:end]):
            claimed[start:end] = b"\x01" * (end - start)
            taken.append(Finding(kind, start, end, 1.0, f"{kind} ({end - start} chars)"))
    return sorted(taken, key=lambda f: f.start)


class PiiRail:
    """Detect PII / secrets and redact them (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[SECRET]``) or block.

    Args:
        kinds: Which detectors to run (keys of ``DETECTORS``); default all.
        action: ``redact`` (default) or ``block`` when anything is found.
        min_entropy: Bits/char above which an unrecognised 20-128 char token counts as a secret.
        name: Name reported in results.
    """

    def __init__(
        self,
        kinds: Sequence[str] | None = None,
        action: str = "redact",
        min_entropy: float = 4.0,
        name: str = "pii",
    ) -> None:
        kinds = list(DETECTORS) if kinds is None else list(kinds)
        unknown = [k for k in kinds if k not in DETECTORS]
        if unknown or not kinds:
            raise ValueError(f"unknown PII kinds {unknown or kinds!r}; accepted: {', '.join(DETECTORS)}")
        if not 0.0 < min_entropy <= 8.0:
            raise ValueError(f"min_entropy must be in (0, 8] bits/char, got {min_entropy!r}")
        self.kinds = kinds
        self.action: Action = check_action(action, ("redact", "block"))
        self.min_entropy = min_entropy
        self.name = name

    def apply(self, text: str, chunks: Sequence[str] = ()) -> RailResult:
        """Check ``text``; ``chunks`` is ignored (part of the common rail signature)."""

        def check() -> tuple[Action, str, list[Finding], float]:
            findings = detect_pii(text, self.kinds, self.min_entropy)
            if not findings:
                return "allow", text, [], 0.0
            redacted = redact_spans(text, [(f.start, f.end, DETECTORS[f.kind][1]) for f in findings])
            return self.action, redacted, findings, 1.0

        return timed(self.name, check)
