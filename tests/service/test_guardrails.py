"""Guardrails: windows, bounds, the always-valid accuracy trip, when a variant was put back.

Trips taking effect (stored, followed, undone by the admin): tests/service/experiment/test_live.py.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from service.config import GuardrailConfig
from service.guardrails import Guardrails, accuracy_trips, enabled_since

FAST = {"check_interval_s": 0.1, "min_requests": 20, "window_s": 30.0}


def _guard(**fields: Any) -> GuardrailConfig:
    return GuardrailConfig.model_validate(FAST | fields)


def test_window_bounds_trip_challengers_only() -> None:
    guard = Guardrails(_guard(max_error_rate=0.1, max_p99_ms=50.0), ["tuned"])
    for i in range(19):
        guard.record("tuned", 5.0, failed=i % 2 == 0)  # half fail, but too few to judge
        guard.record("baseline", 5.0, failed=True)  # the control is never judged
    assert guard.check() == []
    guard.record("tuned", 5.0, failed=True)
    (trip,) = guard.check()
    assert (trip.variant, trip.kind) == ("tuned", "error_rate")
    assert trip.detail["error_rate"] == pytest.approx(11 / 20) and trip.detail["requests"] == 20
    assert guard.check(skip=["tuned"]) == []  # already out of rotation: not judged again
    guard.reset("tuned")
    for i in range(100):
        guard.record("tuned", 200.0 if i == 99 else 10.0, failed=False)
    assert guard.check() == []  # one slow request in 100 is the p99 itself: 10 ms
    guard.record("tuned", 200.0, failed=False)
    (trip,) = guard.check()
    assert trip.kind == "p99_latency" and trip.detail["p99_ms"] == 200.0


def test_window_forgets_old_requests() -> None:
    guard = Guardrails(_guard(window_s=0.2, max_error_rate=0.1), ["tuned"])
    for _ in range(30):
        guard.record("tuned", 1.0, failed=True)
    time.sleep(0.3)
    assert guard.check() == [] and len(guard.windows["tuned"]) == 0


def labelled_rows(n: int, acc_control: float, acc_challenger: float, seed: int = 0) -> list[Any]:
    """(variant, time, correct, latency_ms), the two arms alternating."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(("baseline", float(2 * i), rng.random() < acc_control, 1.0))
        rows.append(("tuned", float(2 * i + 1), rng.random() < acc_challenger, 1.0))
    return rows


def _outcomes(n: int, acc_control: float, acc_challenger: float, seed: int = 0) -> list[Any]:
    return [
        (variant, ok) for variant, _, ok, _ in labelled_rows(n, acc_control, acc_challenger, seed)
    ]


def test_accuracy_trip_needs_a_significantly_worse_challenger() -> None:
    worse = accuracy_trips(_outcomes(1000, 0.85, 0.70), "baseline", ["tuned"], 0.01, 0.05)
    assert [(t.variant, t.kind) for t in worse] == [("tuned", "accuracy")]
    assert worse[0].detail["always_valid_p_value"] <= 0.01 and worse[0].detail["difference"] < 0
    assert accuracy_trips(_outcomes(1000, 0.70, 0.85), "baseline", ["tuned"], 0.01, 0.05) == []
    assert accuracy_trips(_outcomes(300, 0.80, 0.80), "baseline", ["tuned"], 0.01, 0.05) == []
    assert accuracy_trips([], "baseline", ["tuned"], 0.01, 0.05) == []


def test_enabled_since_reads_the_history() -> None:
    off = {"from": {"disabled": []}, "to": {"disabled": ["tuned"]}}
    on = {"from": {"disabled": ["tuned"]}, "to": {"disabled": []}}
    assert enabled_since([], "tuned") == 0.0
    assert enabled_since([(1.0, {"by": "config"}), (2.0, off)], "tuned") == 0.0
    assert enabled_since([(2.0, off), (3.0, on), (4.0, off), (5.0, on)], "tuned") == 5.0
    assert enabled_since([(2.0, off), (3.0, on)], "other") == 0.0
