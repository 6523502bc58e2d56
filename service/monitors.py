"""The store checks the experiment leader runs in the background, made to keep up with a growing
store.

The accuracy guardrail and the sample-ratio gauges read the store every few seconds
(``guardrails.check_interval_s`` times STORE_CHECKS_EVERY in service/experiment/live.py), on the
one leader of the deployment (service/experiment/leader.py), which starts them afresh when it
takes over.
Reading every labelled prediction each time costs in proportion to the experiment's age
(measured on SQLite: over 2 s per check at a million predictions, with the worker's store
connection busy all the while; BENCHMARKS.md), so both keep running totals and each check reads
only the rows stamped after the last one, less SETTLE_S seconds.

Rows younger than SETTLE_S are read again at every check until they settle, and only then folded
into the totals. That catches the rows that land late: a prediction row is written off the
request path (its feedback can be stored first), and replicas that share a PostgreSQL store stamp
rows with their own clocks. A row that lands later than that (a replica whose clock lags by more
than SETTLE_S, a prediction log held up that long) is missed until the next full read: every
RESYNC_S, and whenever this worker's clock steps back, the monitors start afresh from the whole
store. The report always reads everything.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from service.guardrails import Trip, accuracy_trip
from service.stats import Counts, PathEnd, path_end
from service.store import Store

SETTLE_S = 60.0  # how late a row may land and still be counted by the monitors at once
RESYNC_S = 600.0  # how often they read the whole store again, taking in rows that landed later


def before(ts: float) -> float:
    """The largest float below ``ts``: ``x > before(ts)`` is ``x >= ts``."""
    return math.nextafter(ts, -math.inf)


class _Resync:
    """When to read the whole store again: at the first check, every ``every_s``, and whenever
    the clock is behind the last check's (a step back would leave rows behind the cursor)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last_full = self._last_now = -math.inf

    def due(self, now: float) -> bool:
        due = now - self._last_full >= self.every_s or now < self._last_now
        self._last_now = now
        if due:
            self._last_full = now
        return due


@dataclass
class _Path:
    """One challenger's always-valid path against the control, up to feedback time ``until``."""

    salt: str
    since: float  # predictions answered from then on count (when the challenger was put back)
    until: float
    counts: Counts = (0, 0, 0, 0)
    p_value: float = 1.0

    def extended(self, outcomes: list[tuple[str, bool]], control: str, challenger: str,
                 tau: float) -> PathEnd:  # fmt: skip
        """Counts and p-value after ``outcomes``, which follow this path in time."""
        return path_end(outcomes, control, challenger, tau, self.counts, self.p_value)


class AccuracyMonitor:
    """The accuracy guardrail's always-valid test per challenger, read incrementally.

    Outcomes enter the test in the order their feedback arrived (feedback time, then prediction
    id), the order in which the test learns them; the report orders its path the same way. Once
    settled, a path only grows, so its p-value only falls; a row that lands late can still enter
    the unsettled part at an earlier place."""

    def __init__(
        self,
        control: str,
        alpha: float,
        tau: float,
        settle_s: float = SETTLE_S,
        resync_s: float = RESYNC_S,
    ) -> None:
        self.control, self.alpha, self.tau, self.settle_s = control, alpha, tau, settle_s
        self._resync = _Resync(resync_s)
        self._paths: dict[str, _Path] = {}
        self.rows_read = 0  # rows fetched by the last check (what it cost)
        self.ends: dict[str, PathEnd] = {}  # per challenger: its path at the last check

    def check(
        self, store: Store, salt: str, since: Mapping[str, float], now: float | None = None
    ) -> list[Trip]:
        """Trips for the challengers in ``since`` (name -> when it was last put in rotation)."""
        now = time.time() if now is None else now
        if self._resync.due(now):
            self._paths.clear()
        horizon = now - self.settle_s
        trips, self.rows_read = [], 0
        for name, start in since.items():
            path = self._paths.get(name)
            if path is None or (path.salt, path.since) != (salt, start):
                path = self._paths[name] = _Path(salt, start, until=before(start - self.settle_s))
            rows = store.outcomes_after(path.until, start, (self.control, name), salt)
            self.rows_read += len(rows)
            split = next((i for i, row in enumerate(rows) if row.ts > horizon), len(rows))
            settled = [(row.variant, row.correct) for row in rows[:split]]
            path.counts, path.p_value = path.extended(settled, self.control, name, self.tau)
            path.until = max(path.until, horizon)
            fresh = [(row.variant, row.correct) for row in rows[split:]]
            counts, p_value = path.extended(fresh, self.control, name, self.tau)
            self.ends[name] = PathEnd(counts, p_value)  # the progressive rollout reads it
            trip = accuracy_trip(name, counts, p_value, self.alpha)
            if trip is not None:
                trips.append(trip)
        return trips


class TrafficMonitor:
    """Requests per variant in the experiment since the split last changed, read
    incrementally (the sample-ratio check's input)."""

    def __init__(self, settle_s: float = SETTLE_S, resync_s: float = RESYNC_S) -> None:
        self.settle_s = settle_s
        self._resync = _Resync(resync_s)
        self._key: tuple[str, float] | None = None
        self._settled: Counter[str] = Counter()
        self._until = -math.inf
        self.rows_counted = 0  # rows the last check's query counted (what it cost)

    def counts(
        self, store: Store, salt: str, since: float, now: float | None = None
    ) -> dict[str, int]:
        """Requests per variant stamped at or after ``since``."""
        now = time.time() if now is None else now
        if self._resync.due(now) or self._key != (salt, since):
            self._key, self._settled, self._until = (salt, since), Counter(), before(since)
        horizon = max(self._until, now - self.settle_s)
        fresh: Counter[str] = Counter()
        self.rows_counted = 0
        for row in store.traffic_after(self._until, horizon, salt):
            self._settled[row.variant] += row.settled
            fresh[row.variant] += row.requests - row.settled
            self.rows_counted += row.requests
        self._until = horizon
        return dict(self._settled + fresh)
