"""Step and spike load shapes as pure functions of run time; both end by themselves.

The locustfile wraps them in Locust ``LoadTestShape`` classes (Locust is imported only there,
because importing it monkey-patches the interpreter with gevent).
"""

from __future__ import annotations

import math
from typing import Any

Tick = tuple[int, float] | None


def step_tick(
    run_time_s: float, users: int, spawn_rate: float, duration_s: float, step_users: int,
    step_s: float,
) -> Tick:  # fmt: skip
    """``step_users`` more users every ``step_s`` seconds up to ``users``; None after the end."""
    if run_time_s >= duration_s:
        return None
    steps = int(run_time_s // step_s) + 1
    return min(users, max(1, steps * step_users)), spawn_rate


def spike_tick(
    run_time_s: float, users: int, spawn_rate: float, duration_s: float, base_users: int,
    spike_start: float = 0.4, spike_end: float = 0.6,
) -> Tick:  # fmt: skip
    """``base_users`` throughout, ``users`` between the two fractions of the duration."""
    if run_time_s >= duration_s:
        return None
    inside = spike_start * duration_s <= run_time_s < spike_end * duration_s
    # the spike arrives all at once: that is what a spike tests
    return (users, max(spawn_rate, float(users))) if inside else (base_users, spawn_rate)


def make_tick(shape: str, params: dict[str, Any]) -> Any:
    """The tick function of ``shape`` (step or spike) bound to ``params``."""
    if shape == "step":
        return lambda t: step_tick(t, **params)
    if shape == "spike":
        return lambda t: spike_tick(t, **params)
    raise ValueError(f"unknown load shape {shape!r}: expected step or spike")


def default_params(
    shape: str, users: int, spawn_rate: float, duration_s: float, steps: int = 4
) -> dict[str, Any]:
    """Shape parameters from the CLI's users, spawn rate and total duration."""
    params: dict[str, Any] = {"users": users, "spawn_rate": spawn_rate, "duration_s": duration_s}
    if shape == "step":
        params["step_users"] = max(1, math.ceil(users / steps))
        params["step_s"] = duration_s / steps
    else:
        params["base_users"] = max(1, users // 5)
    return params
