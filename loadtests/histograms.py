"""Latency HDR histograms per row (all, each variant, feedback) and per 1-second window:
recorded in each Locust process, sent as encoded deltas, merged on the master.

Precision: summary rows keep 3 significant digits (SUMMARY_DIGITS), the per-second windows of
the plots 2 (WINDOW_DIGITS); values are whole microseconds from 1 us to 60 s (larger ones count
as 60 s). A reported percentile is the nearest-rank sample (the ceil(q/100 * n)-th smallest)
rounded up to the end of its histogram bucket: at most 1 us or 1/1024 (0.1%) above it with 3
digits, 1/128 with 2. Memory is constant in the number of requests: a histogram of 3 digits is
16,384 counters (128 KiB), one of 2 digits 2,560 (20 KiB).

Imported by the locustfile under gevent: keep its imports light (no numpy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from tuneserve.percentiles import rank

# percentile definition: tuneserve/percentiles.py (nearest rank; HDR keeps it within precision)
LOWEST_US = 1
HIGHEST_US = 60_000_000
SUMMARY_DIGITS = 3
WINDOW_DIGITS = 2


def new_histogram(digits: int = SUMMARY_DIGITS) -> HdrHistogram:
    """An empty latency histogram in microseconds, 1 us .. 60 s, ``digits`` significant digits."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def record_ms(hist: HdrHistogram, latency_ms: float) -> None:
    """Record one latency in milliseconds (whole microseconds, clamped to the range)."""
    hist.record_value(min(HIGHEST_US, max(LOWEST_US, round(latency_ms * 1000))))


def decode(encoded: str, digits: int = SUMMARY_DIGITS) -> HdrHistogram:
    """A full-size histogram holding an encoded one (``HdrHistogram.encode()``)."""
    hist = new_histogram(digits)
    hist.decode_and_add(encoded)
    return hist


def nearest_rank_us(hist: HdrHistogram, q: float) -> int | None:
    """The ceil(q/100 * n)-th smallest recorded value (the end of its bucket), None if empty."""
    total = hist.get_total_count()
    if total == 0:
        return None
    k = rank(total, q)
    seen = 0
    for index, count in enumerate(hist.counts):
        seen += count
        if seen >= k:
            return int(hist.get_highest_equivalent_value(hist.get_value_from_index(index)))
    return int(hist.get_max_value())


def percentile_ms(hist: HdrHistogram, q: float) -> float | None:
    """``nearest_rank_us`` in milliseconds."""
    value = nearest_rank_us(hist, q)
    return None if value is None else value / 1000


@dataclass
class Counts:
    """One row's counters and its histogram of successful latencies."""

    digits: int = SUMMARY_DIGITS
    requests: int = 0
    failures: int = 0
    dropped: int = 0
    late: int = 0
    max_ms: float | None = None
    hist: HdrHistogram = field(init=False)

    def __post_init__(self) -> None:
        self.hist = new_histogram(self.digits)

    def add(self, status: int, kind: str, latency_ms: float, late: bool) -> None:
        self.requests += 1
        self.dropped += kind == "dropped"
        self.late += late
        if 200 <= status < 300:
            record_ms(self.hist, latency_ms)
            self.max_ms = latency_ms if self.max_ms is None else max(self.max_ms, latency_ms)
        else:
            self.failures += 1

    def dump(self) -> dict[str, Any]:
        hist = self.hist.encode().decode() if self.hist.get_total_count() else None
        return {"requests": self.requests, "failures": self.failures, "dropped": self.dropped,
                "late": self.late, "max_ms": self.max_ms, "hist": hist}  # fmt: skip

    def merge(self, data: dict[str, Any]) -> None:
        for key in ("requests", "failures", "dropped", "late"):
            setattr(self, key, getattr(self, key) + int(data[key]))
        if data["max_ms"] is not None:
            self.max_ms = max(self.max_ms or 0.0, float(data["max_ms"]))
        if data["hist"]:
            self.hist.decode_and_add(data["hist"])


class Recorder:
    """Rows over the measured interval and rows per 1-second window since the start.

    ``take()`` hands over what was recorded since the last call (a JSON-able delta) and starts
    afresh; ``merge()`` adds such a delta, so a master that merges every worker's deltas holds
    the same counts and histograms as one process that recorded every request itself."""

    def __init__(self) -> None:
        self.rows: dict[str, Counts] = {}
        self.windows: dict[tuple[int, str], Counts] = {}

    def _row(self, name: str) -> Counts:
        return self.rows.setdefault(name, Counts())

    def _window(self, second: int, name: str) -> Counts:
        return self.windows.setdefault((second, name), Counts(WINDOW_DIGITS))

    def record(self, kind: str, variant: str, status: int, latency_ms: float, late: bool,
               measured: bool, second: int | None) -> None:  # fmt: skip
        """One request: into the measured rows if ``measured``, into window ``second`` if any."""
        names = ["all", variant] if variant != "-" else ["all"]
        if kind == "feedback":
            names = ["feedback"]
        for name in names:
            if measured:
                self._row(name).add(status, kind, latency_ms, late)
            if second is not None and kind != "feedback":
                self._window(second, name).add(status, kind, latency_ms, False)

    def dump(self) -> dict[str, Any]:
        """Everything recorded, JSON-able (histograms encoded)."""
        windows = [[second, name, c.dump()] for (second, name), c in self.windows.items()]
        return {"rows": {name: c.dump() for name, c in self.rows.items()}, "windows": windows}

    def take(self) -> dict[str, Any]:
        """``dump()``, then forget it: the delta since the last call."""
        data = self.dump()
        self.rows, self.windows = {}, {}
        return data

    def merge(self, data: dict[str, Any]) -> None:
        """Add a ``dump()``/``take()`` of another recorder."""
        for name, counts in data["rows"].items():
            self._row(name).merge(counts)
        for second, name, counts in data["windows"]:
            self._window(int(second), name).merge(counts)
