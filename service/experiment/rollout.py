"""Progressive rollout: the leader's transitions (advance, promote, roll back) from store-wide
figures, and the admin API's (start, pause, resume, abort).

At every store check the leader (service/experiment/leader.py) reads the challenger's
always-valid path against the control since the plan began (``RolloutJudge``, over the accuracy
monitor's incremental reads) and ``decide`` says what follows:

- the challenger out of rotation (a guardrail trip, or the admin) or significantly worse by the
  always-valid test at the plan's alpha: **roll back** at once (challenger 0%, the rest to the
  others in rotation), unless the plan's ``rollback`` is off (then it holds);
- otherwise, once the step has lasted ``min_step_s`` and seen ``min_samples`` labelled
  predictions of the challenger: **promote** it (it becomes the control at 100%) when it is
  significantly better and ``promote`` is on, else **advance** to the next step; the last step
  holds. A paused plan holds its step but still rolls back.

Two-sided, the always-valid p-value falls to alpha at any time with chance at most alpha when
the arms are equal, so the share of equal challengers promoted stays at or under alpha however
often it is checked. Each transition is a state change (``Changed``) whose history entry carries
its event, written in the same transaction (service/experiment/events.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from service import metrics
from service.config import ServingConfig
from service.errors import ConflictError, InvalidInputError
from service.experiment.events import Event
from service.experiment.plan import ACTIVE, Rollout, plan_from_body, ramp_weights
from service.experiment.state import Changed, ExperimentState
from service.routing import slot_fraction
from service.stats import Counts

logger = logging.getLogger(__name__)

ACTIONS = {"pause": ("running",), "resume": ("paused",), "abort": ACTIVE}


@dataclass(frozen=True)
class Figures:
    """What a decision is made on: the labelled counts since the plan began (control, then
    challenger), the always-valid p-value of their path, and whether the challenger is in
    rotation (if not, the change that took it out)."""

    counts: Counts = (0, 0, 0, 0)
    p_value: float = 1.0
    enabled: bool = True
    taken_out: dict[str, Any] | None = None

    @property
    def difference(self) -> float:
        s_a, n_a, s_b, n_b = self.counts
        return s_b / n_b - s_a / n_a if n_a and n_b else 0.0

    def to_json(self, plan: Rollout, now: float) -> dict[str, Any]:
        s_a, n_a, s_b, n_b = self.counts
        return {
            "step": plan.step, "share": plan.share,
            "labelled": {"control": n_a, "challenger": n_b},
            "accuracy": {"control": s_a / n_a if n_a else None,
                         "challenger": s_b / n_b if n_b else None},
            "step_labelled": n_b - plan.step_labelled, "step_s": now - plan.step_started_at,
            "difference": self.difference, "always_valid_p_value": self.p_value,
            "alpha": plan.alpha,
        } | ({} if self.taken_out is None else {"taken_out": self.taken_out})  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """A transition the leader makes: its kind and why."""

    kind: str  # advance, promote, rollback
    why: str


def decide(plan: Rollout, figures: Figures, now: float) -> Decision | None:
    """The transition ``figures`` call for at ``now`` (None: the plan holds)."""
    if not plan.active:
        return None
    _, n_a, _, n_b = figures.counts
    significant = bool(n_a and n_b) and figures.p_value <= plan.alpha
    evidence = f"always-valid p = {figures.p_value:.3g} at alpha {plan.alpha:g}"
    if not figures.enabled:
        by = (figures.taken_out or {}).get("by", "admin")
        kind = (figures.taken_out or {}).get("kind", "")
        why = f"{plan.challenger} was taken out of rotation by the {by}" + (
            f" ({kind})" if kind else ""
        )
        return Decision("rollback", why) if plan.rollback else None
    if significant and figures.difference < 0:
        points = -figures.difference * 100
        why = f"{plan.challenger} is worse than the control by {points:.1f} points ({evidence})"
        return Decision("rollback", why) if plan.rollback else None
    if plan.status == "paused":
        return None
    step_labelled, step_s = n_b - plan.step_labelled, now - plan.step_started_at
    if step_labelled < plan.min_samples or step_s < plan.min_step_s:
        return None
    if significant and plan.promote:
        points = figures.difference * 100
        why = f"{plan.challenger} is better than the control by {points:.1f} points ({evidence})"
        return Decision("promote", why)
    if plan.step + 1 < len(plan.steps):
        return Decision("advance", (
            f"step {plan.step + 1} of {len(plan.steps)} done: {step_labelled} labelled in "
            f"{step_s:.0f} s, guardrails held, not worse ({evidence})"
        ))  # fmt: skip
    return None  # the last step holds until promoted, rolled back or aborted


def transition(state: ExperimentState, figures: Figures, now: float) -> Changed | None:
    """The state after the leader's decision on ``figures``, and its change (with its event)."""
    plan = state.rollout
    decision = None if plan is None else decide(plan, figures, now)
    if plan is None or decision is None:
        return None
    if decision.kind == "advance":
        ahead = replace(plan, step=plan.step + 1, step_started_at=now,
                        step_labelled=figures.counts[3])  # fmt: skip
        weights = ramp_weights(state.weights, state.disabled, plan.control, plan.challenger,
                               ahead.share)  # fmt: skip
        new = replace(state, weights=weights, rollout=ahead)
    elif decision.kind == "promote":
        weights = {name: float(name == plan.challenger) for name in state.weights}
        new = replace(state, weights=weights, control=plan.challenger,
                      rollout=replace(plan, status="promoted"))  # fmt: skip
    else:
        new = _ended(state, plan, "rolled_back")
    return _changed("rollout", state, new, plan, decision.kind, decision.why,
                    figures.to_json(plan, now), now)  # fmt: skip


def admin_rollout(
    state: ExperimentState, body: Any, settings: ServingConfig, now: float
) -> Changed:
    """The state after a PUT /ab/rollout body: ``{"plan": {...}}`` starts a plan, ``{"action":
    "pause" | "resume" | "abort"}`` acts on the one running; 400 or 409 saying why not."""
    if not isinstance(body, dict) or set(body) not in ({"plan"}, {"action"}):
        raise InvalidInputError(
            'the body must be {"plan": {...}} or {"action": "pause" | "resume" | "abort"} '
            "(and version)"
        )
    plan = state.rollout
    if "plan" in body:
        return _start(state, body["plan"], settings, now)
    action = body["action"]
    if not isinstance(action, str) or action not in ACTIONS:
        raise InvalidInputError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    if plan is None or plan.status not in ACTIONS[action]:
        raise ConflictError(
            f"no rollout plan to {action}: "
            + ("none was started" if plan is None else f"the plan of {plan.challenger!r} is "
               f"{plan.status}")
        )  # fmt: skip
    if action == "abort":
        new = _ended(state, plan, "aborted")
    else:
        paused = action == "pause"
        moved = (
            replace(plan, status="paused")
            if paused
            else replace(plan, status="running", step_started_at=now)
        )  # resuming starts the step's time again
        new = replace(state, rollout=moved)
    why = f"{action}d by the admin" if action != "abort" else "aborted by the admin"
    return _changed("admin", state, new, plan, action, why, {"step": plan.step}, now)


def _start(state: ExperimentState, body: Any, settings: ServingConfig, now: float) -> Changed:
    current = state.rollout
    if current is not None and current.active:
        raise ConflictError(
            f"a rollout of {current.challenger!r} is {current.status} at {current.share:.0%}: "
            'abort it first ({"action": "abort"})'
        )
    control = state.control_of(settings)
    plan = plan_from_body(body, settings, control)
    names = settings.variant_names()
    if plan.challenger not in names or plan.challenger == control:
        raise InvalidInputError(
            f"plan.challenger {plan.challenger!r} must be a served variant other than the "
            f"control {control!r} ({', '.join(names)})"
        )
    if plan.challenger in state.disabled:
        raise InvalidInputError(
            f"{plan.challenger!r} is out of rotation: enable it first (PUT /ab/config)"
        )
    limit = slot_fraction(len(names) - 1)
    if plan.steps[-1] > limit + 1e-9:
        raise InvalidInputError(
            f"plan.steps go up to {plan.steps[-1]:g}, more than a challenger's slot ({limit:g} "
            f"with {len(names) - 1} challengers)"
        )
    # within their slots (service/routing.py), the others leave the control at least 1/k
    plan = plan.stamped(now)
    weights = ramp_weights(state.weights, state.disabled, control, plan.challenger, plan.share)
    new = replace(state, weights=weights, rollout=plan)
    steps = " -> ".join(f"{s:g}" for s in plan.steps)
    return _changed("admin", state, new, plan, "start", f"started by the admin: {steps}", {}, now)


def start_from_config(state: ExperimentState, now: float) -> Changed | None:
    """The config's plan stamped as started at ``now`` (a replica writing its config's state)."""
    if state.rollout is None:
        return None
    plan = state.rollout.stamped(now)
    steps = " -> ".join(f"{s:g}" for s in plan.steps)
    why = f"started from the serving config: {steps}"
    new = replace(state, rollout=plan)
    return _changed("config", new, new, plan, "start", why, {}, now, from_share=0.0)


def _ended(state: ExperimentState, plan: Rollout, status: str) -> ExperimentState:
    """The plan ended with the challenger at 0% (rolled back or aborted)."""
    weights = ramp_weights(state.weights, state.disabled, plan.control, plan.challenger, 0.0)
    return replace(state, weights=weights, rollout=replace(plan, status=status))


def share_of(state: ExperimentState, name: str) -> float:
    """``name``'s share of the traffic under ``state``."""
    weights = state.effective_weights()
    total = sum(weights.values())
    return weights.get(name, 0.0) / total if total > 0 else 0.0


def _changed(
    by: str, old: ExperimentState, new: ExperimentState, plan: Rollout, kind: str, why: str,
    figures: dict[str, Any], now: float, from_share: float | None = None,
) -> Changed:  # fmt: skip
    """The change of a transition, its event inside (written with it: events.record_event)."""
    if from_share is None:  # a start begins from the share it had; the rest from the plan's
        from_share = share_of(old, plan.challenger) if kind == "start" else plan.share
    after = new.rollout.share if new.rollout is not None else 0.0
    event = Event(now, plan.challenger, kind, from_share, after, why, figures, new.salt)
    change = {"by": by, "rollout": kind, "event": event.to_json(), "from": old.to_json(),
              "to": new.to_json()}  # fmt: skip
    return new, change


def announce(change: dict[str, Any]) -> None:
    """Count and log a stored transition (on the worker that wrote it)."""
    event = change["event"]
    metrics.ROLLOUT_TRANSITIONS.labels(kind=event["kind"]).inc()
    level = logging.WARNING if event["kind"] in ("rollback", "abort") else logging.INFO
    logger.log(level, "rollout: %s %s %.4g -> %.4g: %s", event["kind"], event["challenger"],
               event["from_step"], event["to_step"], event["why"])  # fmt: skip
