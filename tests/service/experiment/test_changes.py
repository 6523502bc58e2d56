"""The admin API's rules: the bearer token, and every invalid change refused with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.config import load_serving_config
from service.errors import ForbiddenError, InvalidInputError, UnauthorizedError
from service.experiment.changes import apply_change, check_token, disable_variant
from service.experiment.state import initial_state
from tests.service.conftest import write_serving_config

TOKEN = "s3cret-admin-token"


def _config(tmp_path: Path, exports: dict[str, Path]) -> Path:
    variants = {"baseline": exports["head"], "tuned": exports["lora"]}
    return write_serving_config(tmp_path / "serving.toml", variants, "baseline")


def test_token_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADMIN_T", raising=False)
    with pytest.raises(ForbiddenError, match="set ADMIN_T on the server"):
        check_token(f"Bearer {TOKEN}", "ADMIN_T")
    monkeypatch.setenv("ADMIN_T", TOKEN)
    check_token(f"Bearer {TOKEN}", "ADMIN_T")
    for bad in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
        with pytest.raises(UnauthorizedError):
            check_token(bad, "ADMIN_T")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "JSON object with some of"),
        ({"wights": {}}, "unknown keys"),
        ({"weights": {"nope": 1}}, "unknown variant 'nope'"),
        ({"weights": {"tuned": -1}}, "non-negative number"),
        ({"weights": {"tuned": "1"}}, "non-negative number"),
        ({"weights": {"baseline": 0, "tuned": 0}}, "must not all be 0"),
        ({"disable": ["baseline"]}, "cannot be disabled"),
        ({"disable": ["ghost"]}, "list of served variants"),
        ({"salt": ""}, "salt must be a non-empty string"),
        ({"coverage": 1.5}, r"coverage must be a number in \[0, 1\]"),
        ({"coverage": True}, "coverage must be a number"),
        ({"shadow": {"variant": "ghost"}}, "shadow variant must be one of"),
        ({"shadow": {"share": -0.1}}, r"shadow share must be a number in \[0, 1\]"),
        ({"shadow": {"variant": "tuned", "rate": 1}}, "shadow must be an object"),
    ],
)
def test_invalid_changes_are_refused(
    tmp_path: Path, tiny_exports: dict[str, Path], body: Any, message: str
) -> None:
    settings = load_serving_config(_config(tmp_path, tiny_exports))
    with pytest.raises(InvalidInputError, match=message):
        apply_change(initial_state(settings), body, settings)


def test_a_valid_change_and_a_trip_record_where_they_came_from(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = load_serving_config(_config(tmp_path, tiny_exports))
    state = initial_state(settings)
    changed, change = apply_change(state, {"weights": {"tuned": 3}, "coverage": 0.5}, settings)
    assert changed.weights == {"baseline": 1.0, "tuned": 3.0} and changed.coverage == 0.5
    assert change == {"by": "admin", "from": state.to_json(), "to": changed.to_json()}
    tripped, trip = disable_variant(changed, "tuned", {"kind": "accuracy", "detail": {}})
    assert tripped.disabled == ("tuned",) and tripped.effective_weights()["tuned"] == 0.0
    assert (trip["by"], trip["variant"], trip["kind"]) == ("guardrail", "tuned", "accuracy")
    assert trip["from"]["disabled"] == [] and trip["to"]["disabled"] == ["tuned"]
