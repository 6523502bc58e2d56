"""Request validation: the texts and the user id of a prediction request, or an error naming
what is wrong with them (400, or 413 for too many texts)."""

from __future__ import annotations

from typing import Any

from service.errors import InvalidInputError, PayloadTooLargeError

MAX_USER_ID_CHARS = 256


def check_text(text: Any, where: str = "text") -> str:
    """One text, or an error naming what is wrong with it."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError(f"{where} is empty or whitespace: send some text")
    return text


def check_texts(texts: Any, max_texts: int, where: str = "texts") -> list[str]:
    """The texts of a request, or an error naming what is wrong with them (``where`` names
    them in the message)."""
    if not isinstance(texts, list) or not texts:
        raise InvalidInputError(f"{where} must be a non-empty list of strings")
    if len(texts) > max_texts:
        raise PayloadTooLargeError(
            f"{where} holds {len(texts)} items; at most {max_texts} per request "
            "(split the batch, or raise limits.max_batch_texts)"
        )
    return [check_text(text, f"{where}[{i}]") for i, text in enumerate(texts)]


def check_user_id(value: Any) -> str | None:
    """A user id (the A/B unit), or None; an empty or oversized id is an error."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError("user_id must be a non-empty string (or left out)")
    if len(value) > MAX_USER_ID_CHARS:
        raise InvalidInputError(f"user_id is longer than {MAX_USER_ID_CHARS} characters")
    return value
