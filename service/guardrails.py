"""Guardrails: bounds a challenger must keep, or it is taken out of rotation automatically.

The deployment's experiment leader (one worker of one replica; service/experiment/leader.py)
reads each challenger's requests of the last ``window_s`` from the store's prediction log, so
every worker's and every replica's traffic counts, and checks them every ``check_interval_s``:
with at least ``min_requests`` in the window, an error rate above ``max_error_rate`` or a p99
latency above ``max_p99_ms`` trips the challenger. Less often it reads the labelled predictions
and trips a challenger whose online accuracy is worse than the control's by the always-valid
(mSPRT) test at ``accuracy_alpha``; that test may be checked continuously without inflating false
alarms. The control is never tripped. A trip is stored as an experiment state change, so it
reaches every worker and survives a restart; the admin API's ``enable`` puts the variant back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.config import GuardrailConfig
from service.schema import WindowFigures
from service.stats import Counts, path_end
from service.store import Store


@dataclass(frozen=True)
class Trip:
    """A broken bound: which challenger, which kind, and the figures that broke it."""

    variant: str
    kind: str  # error_rate, p99_latency, accuracy
    detail: dict[str, Any] = field(default_factory=dict)


def window_trip(variant: str, figures: WindowFigures, config: GuardrailConfig) -> Trip | None:
    """The trip of a challenger whose store-wide window breaks a bound (None while it keeps
    them, or has fewer than ``min_requests`` requests in the window)."""
    n = figures.requests
    if n < config.min_requests:
        return None
    if figures.failed / n > config.max_error_rate:
        return Trip(variant, "error_rate", {
            "error_rate": figures.failed / n, "requests": n, "bound": config.max_error_rate,
        })  # fmt: skip
    if figures.p99_ms > config.max_p99_ms:
        return Trip(variant, "p99_latency", {
            "p99_ms": figures.p99_ms, "requests": n, "bound_ms": config.max_p99_ms,
        })  # fmt: skip
    return None


def window_trips(
    store: Store, config: GuardrailConfig, since: Mapping[str, float], salt: str, now: float
) -> list[Trip]:
    """The challengers in ``since`` (name -> when it was last put in rotation) whose requests of
    the last ``window_s`` (from every worker of every replica, read from the store) break a
    bound; a challenger put back in rotation is judged only on what it answered since."""
    trips = []
    for name, start in since.items():
        figures = store.window(name, max(now - config.window_s, start), salt)
        trip = window_trip(name, figures, config)
        if trip is not None:
            trips.append(trip)
    return trips


def accuracy_trip(challenger: str, counts: Counts, p_value: float, alpha: float) -> Trip | None:
    """A trip when the challenger's accuracy is below the control's and the always-valid
    p-value of the path so far is at most ``alpha``."""
    s_a, n_a, s_b, n_b = counts
    if not (n_a and n_b):
        return None
    difference = s_b / n_b - s_a / n_a
    if p_value > alpha or difference >= 0:
        return None
    return Trip(challenger, "accuracy", {
        "difference": difference, "always_valid_p_value": p_value, "alpha": alpha,
        "labelled": {"control": n_a, "challenger": n_b},
    })  # fmt: skip


def accuracy_trips(
    outcomes: list[tuple[str, bool]],
    control: str,
    challengers: Iterable[str],
    alpha: float,
    tau: float,
) -> list[Trip]:
    """Challengers significantly worse than the control by the always-valid test, on
    ``(variant, correct)`` outcomes in the order they became known."""
    trips = []
    for name in challengers:
        end = path_end(outcomes, control, name, tau)
        trip = accuracy_trip(name, end.counts, end.p_value, alpha)
        if trip is not None:
            trips.append(trip)
    return trips


def enabled_since(history: Sequence[tuple[float, dict[str, Any]]], variant: str) -> float:
    """When ``variant`` was last put back in rotation (0: never taken out), from the history of
    state changes; the accuracy guardrail judges it only on what it answered since."""
    for ts, change in reversed(history):
        before = (change.get("from") or {}).get("disabled", [])
        after = (change.get("to") or {}).get("disabled", [])
        if variant in before and variant not in after:
            return ts
    return 0.0
