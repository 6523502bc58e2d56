"""The figures a rollout is judged on, read from the store, and its status for people (the admin
API's GET /ab/rollout, `tuneserve ab-rollout status`, the A/B report).

The figures are the accuracy guardrail's: the challenger's always-valid path against the
control on the store-wide labelled predictions of the experiment, in feedback order, read
incrementally by an ``AccuracyMonitor`` (service/monitors.py); the path starts when the plan
began, or when the challenger was last put back in rotation if that is later.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from service.config import ServingConfig
from service.experiment.events import read_events
from service.experiment.rollout import Figures, share_of
from service.experiment.state import ExperimentState, read_state
from service.guardrails import enabled_since
from service.monitors import AccuracyMonitor
from service.schema import HistoryEntry
from service.store import Store


class RolloutJudge:
    """The leader's figures for the plan in force (one monitor, kept between checks)."""

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self._monitor: AccuracyMonitor | None = None

    def figures(
        self, store: Store, state: ExperimentState, history: Sequence[HistoryEntry]
    ) -> Figures:
        plan = state.rollout
        if plan is None:
            return Figures()
        if self._monitor is None or self._monitor.control != plan.control:
            self._monitor = AccuracyMonitor(plan.control, plan.alpha, self.tau)
        start = max(enabled_since(history, plan.challenger), plan.started_at)
        self._monitor.check(store, state.salt, {plan.challenger: start})
        end = self._monitor.ends[plan.challenger]
        enabled = plan.challenger not in state.disabled
        return Figures(end.counts, end.p_value, enabled,
                       None if enabled else taken_out(history, plan.challenger))  # fmt: skip


def taken_out(history: Sequence[HistoryEntry], variant: str) -> dict[str, Any]:
    """Who took ``variant`` out of rotation last, and why (the guardrail's kind and figures)."""
    for ts, change in reversed(history):
        before = (change.get("from") or {}).get("disabled", [])
        after = (change.get("to") or {}).get("disabled", [])
        if variant in after and variant not in before:
            found = {"ts": ts, "by": change.get("by", "admin")}
            if change.get("by") == "guardrail":
                found |= {"kind": change.get("kind"), "detail": change.get("detail", {})}
            return found
    return {"by": "admin"}


def rollout_status(
    store: Store,
    settings: ServingConfig,
    now: float | None = None,
    state: ExperimentState | None = None,
    history: Sequence[HistoryEntry] | None = None,
) -> dict[str, Any]:
    """The plan in force (or the last one), its figures now, and its experiment's events; no
    store read without a plan when ``state`` and ``history`` are given (the report has them)."""
    state = read_state(store, settings) if state is None else state
    plan = state.rollout
    status: dict[str, Any] = {"control": state.control_of(settings), "plan": None, "events": []}
    if plan is None:
        return status
    history = store.history() if history is None else history
    figures = RolloutJudge(settings.experiment.msprt_tau).figures(store, state, history)
    now = time.time() if now is None else now
    return status | {
        "plan": plan.to_json(),
        "status": plan.status,
        "challenger": plan.challenger,
        "share": share_of(state, plan.challenger),
        "figures": figures.to_json(plan, now),
        "events": [event.to_json() for event in read_events(store, state.salt)],
    }


def format_rollout(status: dict[str, Any]) -> list[str]:
    """The status as text lines: the plan, where it is, and its timeline."""
    plan = status["plan"]
    if plan is None:
        return []
    figures = status["figures"]
    steps = " -> ".join(f"{s:g}" for s in plan["steps"])
    lines = [
        f"rollout of {plan['challenger']} against {plan['control']}: {status['status']}, step "
        f"{plan['step'] + 1} of {len(plan['steps'])} ({steps}), share now {status['share']:.2%}",
        f"  this step: {figures['step_labelled']} of {plan['min_samples']} labelled, "
        f"{figures['step_s']:.0f} of {plan['min_step_s']:g} s; since the start: "
        f"{figures['labelled']['control']} and {figures['labelled']['challenger']} labelled, "
        f"difference {figures['difference'] * 100:+.1f} points, always-valid p = "
        f"{figures['always_valid_p_value']:.3g} (alpha {plan['alpha']:g})",
    ]
    for event in status["events"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["ts"]))
        lines.append(
            f"  {when} {event['kind']:<8} {event['from_step']:>7.2%} -> {event['to_step']:>7.2%}"
            f"  {event['why']}"
        )
    return lines
