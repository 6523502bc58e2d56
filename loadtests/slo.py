"""SLOs for the load-test gate: parse `p99=100ms,fail=1%`, durations, and check a summary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tuneserve.errors import ConfigError

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}
LATENCY_KEYS = (*PERCENTILES, "max")
SLO_HELP = (
    "comma-separated bounds: p50/p90/p95/p99/p99.9/max=<duration> (e.g. p99=100ms), "
    "fail=<percent> (e.g. fail=1%), rps=<minimum requests/s> (e.g. rps=50)"
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration_s(text: str, what: str = "duration") -> float:
    """Seconds from ``250ms``, ``60s``, ``2m``, ``1h`` or a bare number of seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(
            f"{what} {text!r} is not a duration: use a number with ms, s, m or h (e.g. 60s, 2m)"
        )
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True)
class Bound:
    """One SLO term: ``key`` (p99, max, fail, rps) and its limit (ms, percent or requests/s)."""

    key: str
    limit: float
    text: str

    def check(self, row: dict[str, Any]) -> str | None:
        """A sentence naming the breach for one summary row, or None when it holds."""
        if self.key in LATENCY_KEYS:
            value = row.get(f"{self.key}_ms")
            if value is None:
                return f"{self.key}: no successful requests to measure (bound {self.text})"
            if value > self.limit:
                return f"{self.key} {value:.1f} ms > {self.text}"
        elif self.key == "fail":
            value = row["failure_pct"]
            if value > self.limit:
                return f"failures {value:.2f}% > {self.text}"
        elif self.key == "rps" and row["rps"] < self.limit:
            return f"throughput {row['rps']:.1f} req/s < {self.text} req/s"
        return None


def parse_slo(text: str) -> list[Bound]:
    """Bounds from ``p99=100ms,fail=1%``; every malformed term is named in one error."""
    bounds, problems = [], []
    terms = [t.strip() for t in str(text).split(",") if t.strip()]
    if not terms:
        raise ConfigError(f"--slo {text!r} is empty: expected {SLO_HELP}")
    for term in terms:
        key, sep, value = (part.strip() for part in term.partition("="))
        key = key.lower()
        if not sep or not value:
            problems.append(f"{term!r} is not KEY=VALUE")
        elif key in LATENCY_KEYS:
            try:
                bounds.append(Bound(key, parse_duration_s(value, key) * 1000, value))
            except ConfigError:
                problems.append(f"{term!r}: {value!r} is not a duration such as 100ms or 0.5s")
        elif key == "fail":
            number = value.removesuffix("%").strip()
            try:
                limit = float(number)
            except ValueError:
                limit = -1.0
            if not 0 <= limit <= 100:
                problems.append(f"{term!r}: expected a percentage from 0 to 100, such as 1%")
            else:
                bounds.append(Bound(key, limit, f"{limit:g}%"))
        elif key == "rps":
            try:
                bounds.append(Bound(key, float(value), value))
            except ValueError:
                problems.append(f"{term!r}: expected a number of requests per second")
        else:
            problems.append(f"unknown key {key!r}")
    if problems:
        raise ConfigError(f"--slo {text!r}: {'; '.join(problems)}; expected {SLO_HELP}")
    return bounds


def check_slo(bounds: list[Bound], rows: list[dict[str, Any]]) -> list[str]:
    """Every breach, one per bound and summary row (overall and each variant), named."""
    breaches = []
    for row in rows:
        for bound in bounds:
            breach = bound.check(row)
            if breach:
                breaches.append(f"{breach} ({row['name']})")
    return breaches
