"""Request validation: texts and user ids, or an error naming what is wrong with them."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import InvalidInputError, PayloadTooLargeError
from service.validation import MAX_USER_ID_CHARS, check_text, check_texts, check_user_id


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        ([], InvalidInputError, "non-empty list"),
        ("text", InvalidInputError, "non-empty list"),
        (["ok", 3], InvalidInputError, r"texts\[1\] must be a string, got int"),
        (["ok", "  "], InvalidInputError, r"texts\[1\] is empty or whitespace"),
        (["x"] * 5, PayloadTooLargeError, "texts holds 5 items; at most 4"),
    ],
)
def test_check_texts(texts: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_texts(texts, 4)


def test_check_text_names_where_the_problem_is() -> None:
    assert check_text(" good film ") == " good film "  # kept as sent
    with pytest.raises(InvalidInputError, match="text must be a string, got NoneType"):
        check_text(None)
    with pytest.raises(InvalidInputError, match=r"text is empty or whitespace"):
        check_text("\n\t ")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "user_id must be a non-empty string"),
        ("   ", "user_id must be a non-empty string"),
        (7, "user_id must be a non-empty string"),
        ("u" * (MAX_USER_ID_CHARS + 1), f"longer than {MAX_USER_ID_CHARS} characters"),
    ],
)
def test_check_user_id(value: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check_user_id(value)


def test_a_user_id_may_be_left_out_or_be_as_long_as_allowed() -> None:
    assert check_user_id(None) is None
    assert check_user_id("u" * MAX_USER_ID_CHARS) == "u" * MAX_USER_ID_CHARS
