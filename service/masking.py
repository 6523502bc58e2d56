"""Masking of request text before it is stored (``store.log_text``): personal data becomes tokens.

In order: your own patterns (``[masking.patterns]``, each match becomes ``[NAME]``), then the
built-in detectors ``masking.kinds`` names: e-mail addresses ``[EMAIL]``, IBANs ``[IBAN]``, card
numbers (13-19 digits, spaces or dashes allowed, passing the Luhn check) ``[CARD]``, national-id
formats (US SSN, Spanish DNI/NIE, UK National Insurance) ``[ID]``, phone numbers ``[PHONE]``, and
any other run of 9 or more digits ``[ID]``. Dates, times, prices, versions and model numbers
(``RTX 4090``, ``WH-1000XM4``) are left alone. A detector errs towards masking: a 9-digit order
number is masked too. The user id is never stored, only its salted hash (service/store.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from service.config import MaskingConfig

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\w.,])\d(?:[ -]?\d){12,18}(?![\w]|[.,]\d)")
_NATIONAL_ID = re.compile(
    r"\b\d{3}-\d{2}-\d{4}\b"  # US SSN
    r"|\b[XYZ]?\d{7,8}[A-HJ-NP-TV-Z]\b"  # Spanish DNI / NIE
    r"|\b[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"  # UK National Insurance
)
_PHONE = re.compile(
    r"(?<![\w+.,/:-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,8}){1,4}"
    r"(?![\w]|[.,:/-]\d)"
)
_DIGIT_RUN = re.compile(r"(?<![\w.,])\d(?:[ -]?\d){8,}(?![\w]|[.,]\d)")
_DATE = re.compile(r"^(?:\d{4}[-. ]\d{1,2}[-. ]\d{1,2}|\d{1,2}[-. ]\d{1,2}[-. ]\d{2,4})$")
_THOUSANDS = re.compile(r"^\d{1,3}(?: \d{3})+$")  # 1 250 000: an amount, not an id


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn check (card numbers do)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _card(match: re.Match[str]) -> str:
    return "[CARD]" if luhn_ok(_digits(match.group())) else match.group()


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    count = len(_digits(text))
    if not 7 <= count <= 15 or _DATE.match(text) or _THOUSANDS.match(text):
        return text
    if "+" not in text and "(" not in text and count < 9 and re.search(r"[.]", text):
        return text  # 12.30.45 and the like: no country code, few digits, dots
    return "[PHONE]"


def _digit_run(match: re.Match[str]) -> str:
    return match.group() if _THOUSANDS.match(match.group()) else "[ID]"


Step = Callable[[str], str]
_BUILT_IN: dict[str, list[Step]] = {
    "email": [lambda t: _EMAIL.sub("[EMAIL]", t)],
    "iban": [lambda t: _IBAN.sub("[IBAN]", t)],
    "card": [lambda t: _CARD.sub(_card, t)],
    "id": [lambda t: _NATIONAL_ID.sub("[ID]", t)],
    "phone": [lambda t: _PHONE.sub(_phone, t)],
}
_ORDER = ("email", "iban", "card", "id", "phone")


class Masker:
    """The masking step of a serving config: ``masker(text)`` is the text as stored."""

    def __init__(self, config: MaskingConfig) -> None:
        steps: list[Step] = [
            functools.partial(re.compile(pattern).sub, f"[{name.upper()}]")
            for name, pattern in config.patterns.items()
        ]
        for kind in _ORDER:
            if kind in config.kinds:
                steps += _BUILT_IN[kind]
        if "id" in config.kinds:  # after phones: a long run a phone did not take
            steps.append(lambda t: _DIGIT_RUN.sub(_digit_run, t))
        self.steps = steps

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text
