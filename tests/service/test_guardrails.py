"""Guardrails: store-wide windows and bounds, the always-valid accuracy trip, when a variant was
put back.

Trips taking effect (stored, followed, undone by the admin): tests/service/experiment/test_live.py.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.config import GuardrailConfig
from service.guardrails import accuracy_trips, enabled_since, window_trips
from service.stats import p99
from service.store import Store

FAST = {"check_interval_s": 0.1, "min_requests": 20, "window_s": 30.0}


def _guard(**fields: Any) -> GuardrailConfig:
    return GuardrailConfig.model_validate(FAST | fields)


def request_rows(
    variant: str, n: int, failed: int = 0, latency_ms: float = 5.0, ts: float | None = None,
    salt: str = "s", slow: int = 0, slow_ms: float = 200.0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Logged requests of ``variant``: ``failed`` of them failed, ``slow`` took ``slow_ms``."""
    now = time.time() if ts is None else ts
    rows = []
    for i in range(n):
        error = "internal" if i < failed else None
        latency = slow_ms if failed <= i < failed + slow else latency_ms
        rows.append({
            "id": uuid.uuid4().hex, "ts": now, "variant": variant, "model_version": "m",
            "unit": "user", "unit_hash": "h", "forced": 0, "label": "" if error else "p",
            "score": 0.5, "latency_ms": latency, "error": error, "salt": salt,
        })  # fmt: skip
    return rows


def test_window_bounds_trip_challengers_on_store_wide_figures(
    new_store: Callable[[], Path | str],
) -> None:
    store = Store(new_store())
    guard = _guard(max_error_rate=0.1, max_p99_ms=50.0)
    now = time.time()
    store.log_predictions(request_rows("tuned", 19, failed=10))  # half fail, but too few to judge
    store.log_predictions(request_rows("baseline", 40, failed=40))  # the control is not asked
    store.log_predictions(request_rows("tuned", 5, failed=5, salt="other"))  # another experiment
    forced = request_rows("tuned", 5, failed=5)
    for row in forced:
        row["unit"] = "forced"  # QA traffic: left out, as from the statistics
    store.log_predictions(forced)
    assert window_trips(store, guard, {"tuned": 0.0}, "s", now) == []
    store.log_predictions(request_rows("tuned", 1, failed=1))
    (trip,) = window_trips(store, guard, {"tuned": 0.0}, "s", now)
    assert (trip.variant, trip.kind) == ("tuned", "error_rate")
    assert trip.detail["error_rate"] == pytest.approx(11 / 20) and trip.detail["requests"] == 20
    assert window_trips(store, guard, {}, "s", now) == []  # out of rotation: not judged again
    later = now + 1  # put back: judged only on what it answered since
    store.log_predictions(request_rows("tuned", 99, ts=later) + request_rows(
        "tuned", 1, ts=later, slow=1))  # fmt: skip
    assert window_trips(store, guard, {"tuned": later}, "s", now) == []  # one slow in 100: p99 5 ms
    store.log_predictions(request_rows("tuned", 1, ts=later, slow=1))
    (trip,) = window_trips(store, guard, {"tuned": later}, "s", now)
    assert trip.kind == "p99_latency" and trip.detail["p99_ms"] == 200.0
    assert trip.detail["requests"] == 101
    store.close()


def test_window_forgets_old_requests_and_the_p99_matches_the_full_sort(
    new_store: Callable[[], Path | str],
) -> None:
    store = Store(new_store())
    now = time.time()
    store.log_predictions(request_rows("tuned", 30, failed=30, ts=now - 31))  # before the window
    assert window_trips(store, _guard(max_error_rate=0.1), {"tuned": 0.0}, "s", now) == []
    rng = random.Random(1)
    latencies = [rng.expovariate(0.1) for _ in range(537)]
    rows = request_rows("tuned", len(latencies), ts=now)
    for row, latency in zip(rows, latencies, strict=True):
        row["latency_ms"] = latency
    store.log_predictions(rows)
    figures = store.window("tuned", now - 30, "s")
    assert figures == (537, 0, p99(latencies))  # the slowest 1% read, the same nearest rank
    store.close()


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
