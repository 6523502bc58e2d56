"""Progressive rollout end to end: the real Predictor and Experiment (no HTTP) over the real
store, with synthetic traffic and feedback for a challenger that is better, equal, worse or
failing, and the leader's checks run round by round with a clock the test moves on.

Each round sends requests from new users, labels each answer right with the accuracy of the
variant that gave it, waits until the prediction log has written every row, moves the clock
past the step's minimum time and runs the leader's checks once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service import metrics
from service.config import load_serving_config
from service.experiment.events import read_events
from service.predictor import Predictor
from service.report import build_report, format_report
from service.report_page import render_page
from tests.service.conftest import write_serving_config

ROUND = 200  # requests per round
STEP_S = 600.0
PLAN = {"challenger": "tuned", "steps": [0.2, 0.5], "min_samples": 25, "min_step_s": STEP_S}
GUARD = {"accuracy": False, "min_requests": 20, "check_interval_s": 1000.0,
         "leader_lease_s": 5000.0}  # fmt: skip


class Clock:
    """The wall clock, moved on by the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class BrokenRunner:
    """A runner whose model fails every call (a challenger that errors)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    async def run(self, encodings: Any) -> Any:
        raise RuntimeError("the challenger's model crashed")

    async def close(self) -> None:
        await self.runner.close()

    def retire(self) -> None:
        self.runner.retire()


@pytest.fixture(autouse=True)
def _id_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL store needs the shared prediction-id key in the environment."""
    monkeypatch.setenv("TUNESERVE_ID_KEY", "rollout-test-id-key-0123456789abcdef")


def _predictor(tmp_path: Path, exports: dict[str, Path], location: Path | str) -> Predictor:
    store = {"url": location} if isinstance(location, str) else {"path": str(location)}
    path = write_serving_config(
        tmp_path / "serving.toml", {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]},
        "baseline", workers=1, guardrails=GUARD, rollout=PLAN, store=store,
    )  # fmt: skip
    predictor = Predictor(load_serving_config(path))
    predictor.experiment.close()  # no poller: the test runs the leader's checks itself
    predictor.warm_up()
    return predictor


async def _round(predictor: Predictor, first_user: int, accuracy: dict[str, float],
                 rng: random.Random) -> int:  # fmt: skip
    """One round of traffic and feedback; how many prediction rows it logged."""
    logged = 0
    for i in range(first_user, first_user + ROUND):
        try:
            answers = await predictor.predict(["a fine film"], user_id=f"user-{i}")
        except Exception:  # the failing challenger: its error row is logged all the same
            logged += 1
            continue
        logged += 1
        answer = answers.predictions[0]
        right = rng.random() < accuracy[answer["variant"]]
        other = next(label for label in answer["scores"] if label != answer["label"])
        await predictor.feedback(answer["prediction_id"], answer["label"] if right else other)
    return logged


def _simulate(predictor: Predictor, accuracy: dict[str, float], rounds: int,
              seed: int = 7) -> list[str]:  # fmt: skip
    """Rounds of traffic and leader checks until the plan ends; the event kinds stored."""
    clock = Clock()
    predictor.experiment.clock = clock
    rng, logged = random.Random(seed), 0
    for n in range(rounds):
        logged += asyncio.run(_round(predictor, n * ROUND, accuracy, rng))
        _wait_logged(predictor, logged)
        clock.offset += STEP_S
        assert predictor.experiment.check_now(), "the only worker must lead"
        plan = predictor.experiment.state.rollout
        if plan is None or not plan.active:
            break
    return [event.kind for event in read_events(predictor.store)]


def _wait_logged(predictor: Predictor, rows: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while predictor.store.count("predictions") < rows:
        assert time.monotonic() < deadline, "the prediction log never wrote its rows"
        time.sleep(0.02)


def _transitions(kind: str) -> float:
    return float(metrics.ROLLOUT_TRANSITIONS.labels(kind=kind)._value.get())


def test_a_better_challenger_advances_and_is_promoted(
    tmp_path: Path, tiny_exports: dict[str, Path], new_store: Callable[[], Path | str]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, new_store())
    promotions = _transitions("promote")
    kinds = _simulate(predictor, {"baseline": 0.6, "tuned": 0.9}, rounds=8)
    assert kinds[0] == "start" and kinds[-1] == "promote", kinds
    assert "advance" in kinds and set(kinds[1:-1]) == {"advance"}, kinds
    experiment = predictor.experiment
    assert experiment.control == "tuned" and experiment.router.shares == {
        "baseline": 0.0, "tuned": 1.0,
    }  # fmt: skip
    assert _transitions("promote") == promotions + 1
    assert metrics.ROLLOUT_STEP._value.get() == 1.0
    (event,) = [e for e in read_events(predictor.store) if e.kind == "promote"]
    assert event.from_step == 0.5  # promoted from the last step, after the advance
    assert event.to_step == 1.0 and event.figures["always_valid_p_value"] <= 0.05
    assert event.figures["difference"] > 0 and event.state_version == experiment.version
    report = build_report(predictor.store, predictor.settings)
    assert report["control"] == "tuned"  # the report reads the promoted control
    assert [e["kind"] for e in report["rollout"]["events"]] == kinds
    text = format_report(report)
    assert "rollout of tuned against baseline: promoted" in text and " promote " in text
    page = render_page(report)
    assert "Rollout timeline" in page and page.count("<circle") == len(kinds)
    restarted = Predictor(predictor.settings)  # a new worker follows the promoted state
    assert restarted.experiment.control == "tuned"
    asyncio.run(restarted.close())
    asyncio.run(predictor.close())


def test_an_equal_challenger_reaches_the_last_step_and_holds(
    tmp_path: Path, tiny_exports: dict[str, Path], new_store: Callable[[], Path | str]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, new_store())
    kinds = _simulate(predictor, {"baseline": 0.8, "tuned": 0.8}, rounds=5)
    assert kinds == ["start", "advance"], kinds
    plan = predictor.experiment.state.rollout
    assert plan is not None and plan.status == "running" and plan.share == 0.5
    assert predictor.experiment.router.shares["tuned"] == pytest.approx(0.5)
    assert predictor.experiment.control == "baseline"
    asyncio.run(predictor.close())


def test_a_worse_challenger_is_rolled_back(
    tmp_path: Path, tiny_exports: dict[str, Path], new_store: Callable[[], Path | str]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, new_store())
    kinds = _simulate(predictor, {"baseline": 0.9, "tuned": 0.5}, rounds=8)
    assert kinds[0] == "start" and kinds[-1] == "rollback", kinds
    assert set(kinds[1:-1]) <= {"advance"}, kinds
    event = read_events(predictor.store)[-1]
    assert "worse than the control" in event.why and event.to_step == 0.0
    assert event.figures["difference"] < 0
    assert predictor.experiment.router.shares["tuned"] == 0.0
    assert predictor.experiment.control == "baseline"
    asyncio.run(predictor.close())


def test_a_failing_challenger_is_rolled_back_by_its_guardrail(
    tmp_path: Path, tiny_exports: dict[str, Path], new_store: Callable[[], Path | str]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, new_store())
    served = predictor.variants.served["tuned"]
    served.runner = BrokenRunner(served.runner)  # type: ignore[assignment]
    kinds = _simulate(predictor, {"baseline": 0.8, "tuned": 0.8}, rounds=3)
    assert kinds == ["start", "rollback"], kinds
    event = read_events(predictor.store)[-1]
    assert event.why == "tuned was taken out of rotation by the guardrail (error_rate)"
    assert (event.from_step, event.to_step) == (0.2, 0.0)
    assert event.figures["taken_out"]["detail"]["error_rate"] == 1.0
    assert "tuned" in predictor.experiment.state.disabled
    asyncio.run(predictor.close())
