"""Guardrails: windows, bounds, the always-valid accuracy trip, and trips taking effect."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from service import metrics
from service.config import GuardrailConfig, load_serving_config
from service.errors import DeadlineError
from service.guardrails import Guardrails, accuracy_trips, enabled_since
from service.predictor import Predictor
from service.report import build_report, format_report
from service.store import Store
from tests.service.conftest import write_serving_config

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


def _labelled(n: int, acc_control: float, acc_challenger: float, seed: int = 0) -> list[Any]:
    """(variant, time, correct, latency_ms), the two arms alternating."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(("baseline", float(2 * i), rng.random() < acc_control, 1.0))
        rows.append(("tuned", float(2 * i + 1), rng.random() < acc_challenger, 1.0))
    return rows


def _outcomes(n: int, acc_control: float, acc_challenger: float, seed: int = 0) -> list[Any]:
    return [(variant, ok) for variant, _, ok, _ in _labelled(n, acc_control, acc_challenger, seed)]


def test_accuracy_trip_needs_a_significantly_worse_challenger() -> None:
    worse = accuracy_trips(_outcomes(1000, 0.85, 0.70), "baseline", ["tuned"], 0.01, 0.05)
    assert [(t.variant, t.kind) for t in worse] == [("tuned", "accuracy")]
    assert worse[0].detail["always_valid_p_value"] <= 0.01 and worse[0].detail["difference"] < 0
    assert accuracy_trips(_outcomes(1000, 0.70, 0.85), "baseline", ["tuned"], 0.01, 0.05) == []
    assert accuracy_trips(_outcomes(300, 0.80, 0.80), "baseline", ["tuned"], 0.01, 0.05) == []
    assert accuracy_trips([], "baseline", ["tuned"], 0.01, 0.05) == []


def _predictor(tmp_path: Path, exports: dict[str, Path], **sections: Any) -> Predictor:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    path = write_serving_config(tmp_path / "serving.toml", variants, "baseline", **sections)
    predictor = Predictor(load_serving_config(path))
    predictor.warm_up()
    return predictor


def _wait_disabled(predictor: Predictor, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while "tuned" not in predictor.experiment.state.disabled:
        assert time.monotonic() < deadline, "the guardrail never tripped"
        time.sleep(0.05)


async def _send(predictor: Predictor, n: int, start: int = 0) -> list[str]:
    variants = []
    for i in range(start, start + n):
        try:
            answers = await predictor.predict(["good film"], user_id=f"user-{i}")
            variants.append(answers.variant)
        except DeadlineError:
            variants.append("failed")
    return variants


def test_a_slow_challenger_is_taken_out_of_rotation_and_put_back_by_the_admin(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, guardrails=FAST | {"max_p99_ms": 0.001})
    trips = metrics.GUARDRAIL_TRIPS.labels(variant="tuned", kind="p99_latency")._value.get()
    seen = asyncio.run(_send(predictor, 120))
    assert seen.count("tuned") >= 20  # sticky users split between both
    _wait_disabled(predictor)
    assert metrics.GUARDRAIL_TRIPS.labels(variant="tuned", kind="p99_latency")._value.get() == (
        trips + 1
    )
    assert metrics.VARIANT_ENABLED.labels(variant="tuned")._value.get() == 0
    assert set(asyncio.run(_send(predictor, 100, start=1000))) == {"baseline"}
    report = build_report(predictor.store, predictor.settings)
    (trip,) = report["guardrail_trips"]
    assert trip["variant"] == "tuned" and trip["kind"] == "p99_latency"
    assert trip["detail"]["bound_ms"] == 0.001
    assert not next(v for v in report["variants"] if v["variant"] == "tuned")["enabled"]
    assert "guardrail: tuned taken out of rotation (p99_latency)" in format_report(report)
    # the trip is stored: a new worker on the same store starts with it
    other = Predictor(predictor.settings)
    assert other.experiment.state.disabled == ("tuned",)
    asyncio.run(other.close())
    predictor.experiment.change({"enable": ["tuned"]})
    assert predictor.experiment.state.disabled == ()
    assert len(predictor.experiment.guardrails.windows["tuned"]) == 0
    asyncio.run(predictor.close())


def test_a_failing_challenger_trips_on_its_error_rate_and_errors_are_reported(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, guardrails=FAST, limits={"deadline_ms": 0.001})
    seen = asyncio.run(_send(predictor, 80))
    assert set(seen) == {"failed"}  # nothing meets a 1 microsecond deadline
    _wait_disabled(predictor)
    asyncio.run(predictor.close())
    report = build_report(Store(predictor.settings.store.path), predictor.settings)
    by_name = {v["variant"]: v for v in report["variants"]}
    assert by_name["tuned"]["errors"] + by_name["baseline"]["errors"] == 80
    assert by_name["tuned"]["error_rate"] == 1.0 and by_name["baseline"]["error_rate"] == 1.0
    assert by_name["baseline"]["enabled"]  # the control is never taken out
    assert report["guardrail_trips"][0]["kind"] == "error_rate"


def test_a_worse_challenger_trips_on_accuracy_from_the_store(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, guardrails=FAST | {"accuracy_alpha": 0.01})
    rows, feedback = [], []
    for variant, ts, correct, _ in _labelled(600, 0.9, 0.6, seed=3):
        pid = f"{variant}-{ts}"
        rows.append({"id": pid, "ts": time.time() - 2000 + ts, "variant": variant,
                     "model_version": "m", "unit": "user", "unit_hash": "h", "forced": 0,
                     "label": "positive", "score": 0.9, "latency_ms": 1.0})  # fmt: skip
        feedback.append((pid, "positive" if correct else "negative"))
    predictor.store.log_predictions(rows)
    for pid, label in feedback:
        predictor.store.add_feedback(pid, label)
    _wait_disabled(predictor)
    report = build_report(predictor.store, predictor.settings)
    assert report["guardrail_trips"][0]["kind"] == "accuracy"
    # put back by the admin, it is judged only on what it answers from then on: the old
    # evidence does not trip it again at once
    predictor.experiment.change({"enable": ["tuned"]})
    time.sleep(1.5)  # three store checks
    assert predictor.experiment.state.disabled == ()
    asyncio.run(predictor.close())


def test_enabled_since_reads_the_history() -> None:
    off = {"from": {"disabled": []}, "to": {"disabled": ["tuned"]}}
    on = {"from": {"disabled": ["tuned"]}, "to": {"disabled": []}}
    assert enabled_since([], "tuned") == 0.0
    assert enabled_since([(1.0, {"by": "config"}), (2.0, off)], "tuned") == 0.0
    assert enabled_since([(2.0, off), (3.0, on), (4.0, off), (5.0, on)], "tuned") == 5.0
    assert enabled_since([(2.0, off), (3.0, on)], "other") == 0.0
