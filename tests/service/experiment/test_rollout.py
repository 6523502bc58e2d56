"""Progressive rollout decisions: when a plan holds, advances, promotes or rolls back; the
weights a step sets and the users they keep; the admin's plan changes; the false-promotion rate.

The full path (predictor, store, leader): tests/service/experiment/test_rollout_sim.py.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from service.config import ServingConfig
from service.errors import ConflictError, InvalidInputError
from service.experiment.plan import Rollout, ramp_weights
from service.experiment.rollout import Figures, admin_rollout, decide, transition
from service.experiment.state import ExperimentState, initial_state
from service.routing import Router
from service.stats import path_end

PLAN = Rollout("tuned", (0.1, 0.25, 0.5), min_samples=50, min_step_s=600.0, alpha=0.05,
               control="baseline", started_at=1000.0, step_started_at=1000.0)  # fmt: skip


def _figures(s_a: int, n_a: int, s_b: int, n_b: int, p: float, **kw: Any) -> Figures:
    return Figures((s_a, n_a, s_b, n_b), p, **kw)


def test_a_step_ends_only_with_its_samples_and_its_time() -> None:
    fine = _figures(400, 500, 48, 60, 0.6)
    assert decide(PLAN, fine, now=1000.0 + 599) is None  # too early
    assert decide(PLAN, _figures(400, 500, 39, 49, 0.6), now=1000.0 + 601) is None  # too few
    step = decide(PLAN, fine, now=1000.0 + 601)
    assert step is not None and step.kind == "advance" and "step 1 of 3 done" in step.why
    # the step's own samples count: 60 labelled, 20 of them before the step began
    assert decide(replace(PLAN, step_labelled=20), fine, now=1601) is None
    last = replace(PLAN, step=2)
    assert decide(last, fine, now=1601) is None  # the last step holds
    assert decide(replace(PLAN, status="paused"), fine, now=1601) is None
    for ended in ("promoted", "rolled_back", "aborted"):
        assert decide(replace(PLAN, status=ended), _figures(1, 9, 0, 9, 0.0), now=9999) is None


def test_promotion_needs_a_significant_gain_and_the_step_done() -> None:
    better = _figures(350, 500, 55, 60, 0.01)
    assert decide(PLAN, better, now=1100) is None  # the step's minimum time first
    promote = decide(PLAN, better, now=1601)
    assert promote is not None and promote.kind == "promote"
    assert "better than the control by 21.7 points" in promote.why
    off = decide(replace(PLAN, promote=False), better, now=1601)
    assert off is not None and off.kind == "advance"  # promotion off: it only advances
    unsure = decide(PLAN, _figures(350, 500, 55, 60, 0.06), now=1601)
    assert unsure is not None and unsure.kind == "advance"  # not significant: no promotion


def test_a_loss_or_a_trip_rolls_back_at_once() -> None:
    worse = _figures(450, 500, 30, 60, 0.001)
    back = decide(PLAN, worse, now=1001)  # no minimums for a rollback
    assert back is not None and back.kind == "rollback" and "worse than the control" in back.why
    paused = decide(replace(PLAN, status="paused"), worse, now=1001)
    assert paused is not None and paused.kind == "rollback"  # a pause holds, it does not shield
    assert decide(replace(PLAN, rollback=False), worse, now=1601) is None  # held, not advanced
    trip = {"by": "guardrail", "kind": "error_rate", "detail": {"error_rate": 0.5}}
    out = decide(PLAN, _figures(0, 0, 0, 0, 1.0, enabled=False, taken_out=trip), now=1001)
    assert out is not None and out.kind == "rollback"
    assert out.why == "tuned was taken out of rotation by the guardrail (error_rate)"
    assert decide(PLAN, _figures(450, 500, 30, 60, 0.06), now=1001) is None  # not significant


def test_ramp_weights_set_the_share_and_keep_sticky_users() -> None:
    weights = {"baseline": 1.0, "tuned": 0.0, "other": 1.0}
    at = {share: ramp_weights(weights, (), "baseline", "tuned", share) for share in (0.05, 0.25)}
    for share, ramped in at.items():
        router = Router(ramped, "baseline", "salt-1")
        assert router.shares["tuned"] == pytest.approx(share)
        assert router.shares["other"] == pytest.approx(0.5)  # taken from the control alone
    five, quarter = Router(at[0.05], "baseline", "salt-1"), Router(at[0.25], "baseline", "salt-1")
    users = [f"user-{i}" for i in range(4000)]
    before = {u: five.choose(user_id=u).variant for u in users}
    after = {u: quarter.choose(user_id=u).variant for u in users}
    on_tuned = [u for u in users if before[u] == "tuned"]
    assert len(on_tuned) > 100 and all(after[u] == "tuned" for u in on_tuned)
    assert all(after[u] == "other" for u in users if before[u] == "other")  # its slot untouched
    moved = {before[u] for u in users if before[u] != after[u]}
    assert moved == {"baseline"}  # only control users moved, and only to the challenger
    back = ramp_weights(at[0.25], ("other",), "baseline", "tuned", 0.0)
    assert back["tuned"] == 0.0 and back["baseline"] == pytest.approx(1.0)  # other is out
    assert back["other"] == pytest.approx(1.0)  # put back, it would have its share again


def _settings(tiny_settings: ServingConfig, **rollout: Any) -> ServingConfig:
    return tiny_settings.model_copy(
        update={"rollout": tiny_settings.rollout.model_copy(update=rollout)}
    )


@pytest.fixture
def tiny_settings(tmp_path: Path) -> ServingConfig:
    return ServingConfig.model_validate({
        "variants": [{"name": "baseline", "path": str(tmp_path), "control": True},
                     {"name": "tuned", "path": str(tmp_path)}],
    })  # fmt: skip


def test_admin_plans_and_actions(tiny_settings: ServingConfig) -> None:
    state = initial_state(tiny_settings)
    plan = {"challenger": "tuned", "steps": [0.1, 0.5], "min_samples": 10, "min_step_s": 0}
    started, change = admin_rollout(state, {"plan": plan}, tiny_settings, now=50.0)
    assert started.rollout is not None and started.rollout.share == 0.1
    assert started.rollout.alpha == tiny_settings.experiment.alpha  # the experiment's default
    assert started.weights["tuned"] == pytest.approx(0.1)
    assert change["event"]["kind"] == "start" and change["event"]["from_step"] == 0.5
    with pytest.raises(ConflictError, match="a rollout of 'tuned' is running at 10%"):
        admin_rollout(started, {"plan": plan}, tiny_settings, now=51.0)
    paused, change = admin_rollout(started, {"action": "pause"}, tiny_settings, now=60.0)
    assert paused.rollout is not None and paused.rollout.status == "paused"
    assert change["event"]["why"] == "paused by the admin"
    with pytest.raises(ConflictError, match="no rollout plan to pause: the plan of 'tuned' is"):
        admin_rollout(paused, {"action": "pause"}, tiny_settings, now=61.0)
    resumed, _ = admin_rollout(paused, {"action": "resume"}, tiny_settings, now=70.0)
    assert resumed.rollout is not None and resumed.rollout.step_started_at == 70.0
    aborted, change = admin_rollout(resumed, {"action": "abort"}, tiny_settings, now=80.0)
    assert aborted.weights["tuned"] == 0.0 and change["event"]["to_step"] == 0.0
    for body, message in [
        ({"plan": plan, "action": "pause"}, 'the body must be {"plan"'),
        ({"action": "stop"}, "action must be one of pause, resume, abort, got 'stop'"),
        ({"action": ["pause"]}, "action must be one of pause, resume, abort, got \\['pause'\\]"),
        ({"plan": "tuned"}, "plan must be an object"),
        ({"plan": {"challenger": "baseline"}}, "must be a served variant other than the control"),
        ({"plan": {"challenger": "tuned", "steps": [0.5, 0.2]}}, "rollout.steps must increase"),
        ({"plan": {"challenger": "tuned", "steps": [1.0]}}, "must each be in \\(0, 1\\)"),
        ({"plan": {"challenger": "tuned", "min_samples": 0}}, "min_samples"),
        ({"plan": {"challenger": "tuned", "speed": 2}}, "speed"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            admin_rollout(aborted, body, tiny_settings, now=90.0)
    with pytest.raises(ConflictError, match="no rollout plan to resume: none was started"):
        admin_rollout(state, {"action": "resume"}, tiny_settings, now=1.0)


def test_promotion_makes_the_challenger_the_control(tiny_settings: ServingConfig) -> None:
    state = initial_state(_settings(tiny_settings, challenger="tuned", steps=[0.2],
                                    min_samples=1, min_step_s=0))  # fmt: skip
    assert state.rollout is not None and state.weights["tuned"] == pytest.approx(0.2)
    promoted, change = transition(state, _figures(50, 100, 20, 20, 0.001), now=10.0) or (None, {})
    assert isinstance(promoted, ExperimentState) and promoted.control == "tuned"
    assert promoted.control_of(tiny_settings) == "tuned"
    assert promoted.weights == {"baseline": 0.0, "tuned": 1.0}
    assert change["event"]["kind"] == "promote" and change["event"]["to_step"] == 1.0
    assert change["event"]["figures"]["labelled"] == {"control": 100, "challenger": 20}
    again = ExperimentState.from_json(promoted.to_json())
    assert again == promoted  # it survives the store's JSON


TAU = 0.05  # experiment.msprt_tau's default (0.2 promotes 0.5% of equal challengers here)


def _run_plan(acc_control: float, acc_challenger: float, seed: int, rounds: int = 8) -> str:
    """One plan over outcomes drawn at the given accuracies, checked after every round, as the
    leader checks; the plan's status at the end."""
    rng = random.Random(seed)
    plan = replace(PLAN, steps=(0.2, 0.5), min_samples=25, min_step_s=0.0, step_started_at=0.0)
    counts, p_value = (0, 0, 0, 0), 1.0
    for _ in range(rounds):
        outcomes = []
        for _ in range(200):
            on_b = rng.random() < plan.share
            acc = acc_challenger if on_b else acc_control
            outcomes.append(("tuned" if on_b else "baseline", rng.random() < acc))
        counts, p_value = path_end(outcomes, "baseline", "tuned", TAU, counts, p_value)
        decision = decide(plan, Figures(counts, p_value), now=0.0)
        if decision is None:
            continue
        if decision.kind == "advance":
            plan = replace(plan, step=plan.step + 1, step_labelled=counts[3])
        else:
            return decision.kind
    return f"{plan.status} at {plan.share:g}"


def test_equal_challengers_are_promoted_at_most_alpha_of_the_time() -> None:
    seeds = 400
    ended = [_run_plan(0.8, 0.8, seed) for seed in range(seeds)]
    promoted = ended.count("promote") / seeds
    assert promoted <= PLAN.alpha, f"{promoted:.3f} of equal challengers promoted"
    assert ended.count("rollback") / seeds <= PLAN.alpha
    assert ended.count("running at 0.5") / seeds >= 0.9  # most reach the last step and hold
    better = [_run_plan(0.7, 0.85, seed) for seed in range(100)]
    assert better.count("promote") >= 80  # and the test has the power to promote a better one
