"""`--find-max`: the highest offered (open-loop) arrival rate whose run meets the SLO."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from loadtests.config import LoadTestConfig
from loadtests.runner import run_locust
from loadtests.slo import Bound, check_slo

log = logging.getLogger(__name__)


def find_max_rate(
    cfg: LoadTestConfig, bounds: list[Bound], run_dir: Path, traffic: list[list[Any]],
    max_rate: float, max_trials: int = 8, precision: float = 0.1,
) -> dict[str, Any]:  # fmt: skip
    """Double the rate from ``cfg.rate`` (or 10/s) until a trial breaks the SLO, then bisect
    until the bracket is within ``precision`` of its top; every trial is an open-loop run."""
    trial_cfg = cfg.model_copy(update={"open_loop": True, "shape": "constant"})
    trials: list[dict[str, Any]] = []

    def passes(rate: float) -> bool:
        folder = run_dir / f"trial-{len(trials) + 1:02d}-{rate:.1f}rps"
        log.info("find-max trial %d: %.1f req/s offered for %.0f s (+%.0f s warm-up)",
                 len(trials) + 1, rate, cfg.duration_s, cfg.warmup_s)  # fmt: skip
        result = run_locust(trial_cfg, folder, traffic, rate)
        breaches = check_slo(bounds, result["rows"])
        overall = result["rows"][0]
        trials.append({"offered_rps": rate, "folder": folder.name, "breaches": breaches,
                       "rows": result["rows"], "p50_ms": overall["p50_ms"],
                       "p99_ms": overall["p99_ms"], "window": result["window"]})  # fmt: skip
        log.info("  %.1f req/s: p99 %s ms, failures %.2f%%: %s", rate,
                 "-" if overall["p99_ms"] is None else f"{overall['p99_ms']:.1f}",
                 overall["failure_pct"], "; ".join(breaches) or "SLO met")  # fmt: skip
        return not breaches

    low, high = 0.0, None
    rate = cfg.rate if cfg.rate > 0 else 10.0
    while high is None and len(trials) < max_trials:
        if passes(rate):
            low = rate
            if rate >= max_rate:
                break
            rate = min(rate * 2, max_rate)
        else:
            high = rate
    while high is not None and high - low > precision * high and len(trials) < max_trials:
        mid = (low + high) / 2
        if passes(mid):
            low = mid
        else:
            high = mid
    return {"max_rate_rps": low or None, "first_failing_rps": high, "trials": trials,
            "capped": high is None}  # fmt: skip
