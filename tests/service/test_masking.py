"""Masking of stored request text: real-looking personal data goes, dates, prices and model
numbers stay; the config's own patterns, validated at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import MaskingConfig, load_serving_config
from service.masking import Masker, luhn_ok
from tests.service.conftest import write_serving_config
from tuneserve.errors import ConfigError

MASK = Masker(MaskingConfig.model_validate({}))

MASKED = [
    ("Contact me at jane.doe+orders@example.co.uk please", "Contact me at [EMAIL] please"),
    ("mail: J_Smith42@mail-server.example.org.", "mail: [EMAIL]."),
    ("call +44 20 7946 0958 after 6pm", "call [PHONE] after 6pm"),
    ("my number is (555) 123-4567.", "my number is [PHONE]."),
    ("ring 555-123-4567 or +1-202-555-0143", "ring [PHONE] or [PHONE]"),
    ("Tel. 030 12345678", "Tel. [PHONE]"),
    ("+33 6 12 34 56 78", "[PHONE]"),
    ("card 4111 1111 1111 1111 exp 12/27", "card [CARD] exp 12/27"),
    ("paid with 5500-0000-0000-0004", "paid with [CARD]"),
    ("amex 378282246310005!", "amex [CARD]!"),
    ("IBAN DE89 3704 0044 0532 0130 00 thanks", "IBAN [IBAN] thanks"),
    ("send to GB82WEST12345698765432", "send to [IBAN]"),
    ("SSN 123-45-6789 on file", "SSN [ID] on file"),
    ("DNI 12345678Z", "DNI [ID]"),
    ("NI number AB 12 34 56 C", "NI number [ID]"),
    ("order 4111111111111112 failed", "order [ID] failed"),  # 16 digits, not Luhn: still masked
    ("customer no. 123456789012", "customer no. [ID]"),
]

KEPT = [
    "The meeting is on 2024-03-15 at 10:30, or 15.03.2024.",
    "It costs $1,299.99 (was €1.499,00), or 12 500 000 won.",
    "My RTX 4090 and the WH-1000XM4 arrived; SM-G991B is next.",
    "Version 1.2.3 of iOS 17.4.1, build 21E236.",
    "Rated 4.5/5 by 1,234 users in 2023; ISBN-less, 300 pages.",
    "Room 101, floor 3, between 9 and 17 on 24/12/2024.",
    "Score 98-95 after 2 overtimes; 60 000 fans.",
    "The film was great, a solid 10 out of 10!",
]


@pytest.mark.parametrize(("text", "stored"), MASKED)
def test_personal_data_is_masked(text: str, stored: str) -> None:
    assert MASK(text) == stored


@pytest.mark.parametrize("text", KEPT)
def test_dates_prices_and_model_numbers_survive(text: str) -> None:
    assert MASK(text) == text


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")


def test_kinds_can_be_narrowed_and_patterns_come_first() -> None:
    only_email = Masker(MaskingConfig.model_validate({"kinds": ["email"]}))
    assert only_email("a@b.io +44 20 7946 0958") == "[EMAIL] +44 20 7946 0958"
    own = Masker(MaskingConfig.model_validate({"patterns": {"employee": r"EMP-\d{6}"}}))
    assert own("ask EMP-123456 or EMP-999999999") == "ask [EMPLOYEE] or [EMPLOYEE]999"
    none = Masker(MaskingConfig.model_validate({"kinds": []}))
    assert none("a@b.io") == "a@b.io"


@pytest.mark.parametrize(
    ("patterns", "message"),
    [({"bad": "EMP-(\\d+"}, r"masking.patterns.bad is not a valid regular expression"),
     ({"empty": "x*"}, r"masking.patterns.empty matches the empty string"),
     ({"Bad Name": "x"}, r"masking.patterns name 'Bad Name' must be")],
)  # fmt: skip
def test_a_bad_pattern_is_a_clear_error_at_load(
    tmp_path: Path, patterns: dict[str, str], message: str
) -> None:
    config = write_serving_config(tmp_path / "serving.toml", {"a": tmp_path}, "a")
    lines = ["[masking.patterns]", *(f"'{k}' = '{v}'" for k, v in patterns.items())]
    config.write_text(config.read_text() + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_serving_config(config)
