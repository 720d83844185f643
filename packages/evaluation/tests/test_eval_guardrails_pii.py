"""PII rail: clear positives per kind, hard negatives (Luhn / mod-97 failures, e-mails in code), redaction."""

from __future__ import annotations

import random
import re

import pytest

from nanoforge.evaluation.guardrails.pii import (
    PiiRail,
    detect_pii,
    find_cards,
    find_emails,
    find_ibans,
    find_phones,
    find_secrets,
    iban_valid,
    luhn_valid,
)


def _kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in detect_pii(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ana.lopez@uni.edu today", ("email", "ana.lopez@uni.edu")),
        ("call +44 20 7946 0958 now", ("phone", "+44 20 7946 0958")),
        ("office (415) 555-2671.", ("phone", "(415) 555-2671")),
        ("visa 4111 1111 1111 1111 ok", ("card", "4111 1111 1111 1111")),
        ("amex 3782 822463 10005", ("card", "3782 822463 10005")),
        ("to DE89 3704 0044 0532 0130 00.", ("iban", "DE89 3704 0044 0532 0130 00")),
        ("iban GB82WEST12345698765432", ("iban", "GB82WEST12345698765432")),
        ("key=AKIAQ3EGRT7PXMZ4LW2B", ("secret", "AKIAQ3EGRT7PXMZ4LW2B")),
        (
            "tok ghp_4fT9kLmQ2xWz8RbN1cVy6HdJ3sPaE7uG0oKi end",
            ("secret", "ghp_4fT9kLmQ2xWz8RbN1cVy6HdJ3sPaE7uG0oKi"),
        ),
        ("OPENAI_API_KEY=sk-proj-Xy7Qw2Lm9Kp4Rt8Zs1Vb6Nc3", ("secret", "sk-proj-Xy7Qw2Lm9Kp4Rt8Zs1Vb6Nc3")),
        ("random 7hQx2VbN9mKp4LsW8rTz3YcJ here", ("secret", "7hQx2VbN9mKp4LsW8rTz3YcJ")),
    ],
)
def test_pii_clear_positives(text: str, expected: tuple[str, str]) -> None:
    assert _kinds(text) == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 shipped",  # Luhn fails
        "ref DE89 3704 0044 0532 0130 01",  # mod-97 fails
        "y = x@weights.shape; z = q@k.transpose(0, 1); w = a@b.T",  # matmul in code
        "npm install lodash@4.17.21 and use @dataclass",
        "released 2024-01-15, build 3.11.7, host 192.168.100.200",
        "order 4155552671 and population 1 200 000",
        "commit 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b, id 123e4567-e89b-12d3-a456-426614174000",
        "rename getUserAccountSettingsFromDatabase2; MAX_RETRY_COUNT_FOR_HTTP2",
        "password = <your-password>",
        "invoice 1234567812345670",  # Luhn-valid but no card issuer prefix
    ],
)
def test_pii_hard_negatives(text: str) -> None:
    assert _kinds(text) == []


def test_checksums_reject_single_digit_changes() -> None:
    assert luhn_valid("4111111111111111") and iban_valid("GB82 WEST 1234 5698 7654 32")
    for i in range(16):
        digits = list("4111111111111111")
        digits[i] = str((int(digits[i]) + 1) % 10)
        assert not luhn_valid("".join(digits))
    assert not iban_valid("GB82 WEST 1234 5698 7654 33") and not iban_valid("GB82")


def test_random_16_digit_numbers_failing_luhn_are_never_cards() -> None:
    rng = random.Random(0)
    checked = 0
    while checked < 500:
        digits = "4" + "".join(
            rng.choice("0123456789") for _ in range(15)
        )  # Visa prefix, so only Luhn decides
        if luhn_valid(digits):
            assert find_cards(f"n {digits} n") == [(2, 18)]
            continue
        grouped = " ".join(digits[i : i + 4] for i in range(0, 16, 4))
        assert find_cards(f"n {digits} n") == [] and find_cards(f"n {grouped} n") == []
        checked += 1


def test_emails_phones_ibans_each_detector_alone() -> None:
    assert find_emails("PRIYA.N@OUTLOOK.COM and <hans@firma.de>") == [(0, 19), (25, 38)]
    assert find_phones("Mobile: 0049 151 23456789") == [(8, 25)]
    assert find_phones("room 4.12 at 10:30") == []
    assert find_ibans("NL91ABNA0417164300 NL91ABNA0417164301") == [(0, 18)]
    assert find_ibans("CH80 0076 2011 6238 5295") == []  # right checksum shape, wrong length for CH
    assert find_secrets("-----BEGIN RSA PRIVATE KEY-----") == [(0, 31)]


def test_redaction_uses_typed_placeholders_and_keeps_the_rest() -> None:
    text = "Hi, I'm Tom (tom.baker@gmail.com, +1 212 555 0143). Card 5521 0487 1234 5675.\nThanks!"
    result = PiiRail().apply(text)
    assert result.action == "redact" and result.allowed
    assert result.redacted_text == "Hi, I'm Tom ([EMAIL], [PHONE]). Card [CARD].\nThanks!"
    assert [f.kind for f in result.findings] == ["email", "phone", "card"]
    assert all("tom.baker" not in f.detail for f in result.findings)  # findings never carry the value
    assert result.latency_ms > 0


def test_block_action_and_kind_selection() -> None:
    blocked = PiiRail(action="block").apply("mail ana@uni.edu")
    assert not blocked.allowed and blocked.action == "block"
    only_cards = PiiRail(kinds=["card"]).apply("mail ana@uni.edu")
    assert only_cards.action == "allow" and only_cards.redacted_text == "mail ana@uni.edu"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kinds": ["ssn"]}, "unknown PII kinds ['ssn']; accepted: secret, card, iban, email, phone"),
        ({"action": "warn"}, "unknown guardrail action 'warn'; accepted: redact, block"),
        ({"min_entropy": 0}, "min_entropy must be in (0, 8] bits/char, got 0"),
    ],
)
def test_bad_configuration_is_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        PiiRail(**kwargs)


def test_redaction_preserves_surrounding_text_exactly() -> None:
    rng = random.Random(1)
    alphabet = "abcdefghij ,.;:!?\n\t"
    for _ in range(200):
        a, b, c = ("".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(3))
        text = f"{a} bob@corp.com {b} 4111-1111-1111-1111 {c}"
        assert PiiRail().apply(text).redacted_text == f"{a} [EMAIL] {b} [CARD] {c}"
