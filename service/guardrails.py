"""Guardrails: bounds a challenger must keep, or it is taken out of rotation automatically.

Each worker keeps a sliding window of its own requests per challenger (time, latency, failed)
and checks it every ``check_interval_s``: with at least ``min_requests`` in the window, an error
rate above ``max_error_rate`` or a p99 latency above ``max_p99_ms`` trips the challenger. Less
often it reads the labelled predictions from the store and trips a challenger whose online
accuracy is worse than the control's by the always-valid (mSPRT) test at ``accuracy_alpha``; that
test may be checked continuously without inflating false alarms. The control is never tripped.
A trip is stored as an experiment state change, so it reaches every worker and survives a
restart; the admin API's ``enable`` puts the variant back.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.config import GuardrailConfig
from service.stats import Counts, p99, path_end


@dataclass(frozen=True)
class Trip:
    """A broken bound: which challenger, which kind, and the figures that broke it."""

    variant: str
    kind: str  # error_rate, p99_latency, accuracy
    detail: dict[str, Any] = field(default_factory=dict)


class Guardrails:
    """This worker's sliding windows of each challenger's requests."""

    def __init__(self, config: GuardrailConfig, challengers: Iterable[str]) -> None:
        self.config = config
        self.windows: dict[str, deque[tuple[float, float, bool]]] = {
            name: deque() for name in challengers
        }
        self._lock = threading.Lock()

    def record(self, variant: str, latency_ms: float, failed: bool) -> None:
        """Note one request of ``variant`` (ignored for the control)."""
        window = self.windows.get(variant)
        if window is not None:
            with self._lock:
                window.append((time.monotonic(), latency_ms, failed))

    def reset(self, variant: str) -> None:
        """Forget a variant's window (when it is put back in rotation)."""
        with self._lock:
            self.windows.get(variant, deque()).clear()

    def check(self, skip: Iterable[str] = ()) -> list[Trip]:
        """The challengers whose window breaks a bound (those in ``skip`` are not judged)."""
        config = self.config
        horizon = time.monotonic() - config.window_s
        trips = []
        skipped = set(skip)
        with self._lock:
            for name, window in self.windows.items():
                while window and window[0][0] < horizon:
                    window.popleft()
                n = len(window)
                if name in skipped or n < config.min_requests:
                    continue
                failed = sum(1 for _, _, f in window if f)
                if failed / n > config.max_error_rate:
                    trips.append(Trip(name, "error_rate", {
                        "error_rate": failed / n, "requests": n, "bound": config.max_error_rate,
                    }))  # fmt: skip
                    continue
                latencies = [lat for _, lat, f in window if not f]
                worst = p99(latencies) if latencies else 0.0
                if worst > config.max_p99_ms:
                    trips.append(Trip(name, "p99_latency", {
                        "p99_ms": worst, "requests": n, "bound_ms": config.max_p99_ms,
                    }))  # fmt: skip
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
