"""The service's errors: their statuses, kinds and headers, and the one status-to-kind table."""

from __future__ import annotations

import pytest

from service.errors import (
    CONTRACT_ERRORS,
    OverloadedError,
    ServiceError,
    UnavailableError,
    kind_for_status,
)


def test_the_table_is_the_classes() -> None:
    for error in CONTRACT_ERRORS:
        assert kind_for_status(error.status) == error.kind
    assert len({e.status for e in CONTRACT_ERRORS}) == len(CONTRACT_ERRORS)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(415, "invalid_input"), (422, "invalid_input"), (429, "overloaded"), (503, "overloaded"),
     (418, "invalid_input"), (500, "internal"), (502, "internal")],
)  # fmt: skip
def test_other_layers_statuses_get_a_kind(status: int, kind: str) -> None:
    assert kind_for_status(status) == kind


def test_retry_after_is_a_header_of_the_error() -> None:
    starting = UnavailableError("still starting", retry_after_s=3)
    assert starting.status == 503 and starting.headers == {"Retry-After": "3"}
    assert starting.body() == {"error": "still starting", "kind": "unavailable", "status": 503}
    shed = OverloadedError("busy", retry_after_s=1)
    assert shed.headers == {"Retry-After": "1"}
    assert OverloadedError("busy", headers={"Retry-After": "2"}).headers == {"Retry-After": "2"}
    assert ServiceError("x").headers == {}
