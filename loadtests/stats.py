"""The report's statistics from the merged HDR histograms (Locust rounds its stored latencies),
and the opt-in raw per-request dump read back (for audits and tests)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

from loadtests.histograms import WINDOW_DIGITS, Counts
from loadtests.histograms import percentile_ms as hist_percentile_ms
from loadtests.slo import PERCENTILES
from tuneserve.errors import RunError

ROW_ORDER = {"all": 0, "feedback": 2}  # variants (1) between


class Sample(NamedTuple):
    """One request of the raw dump, as the locustfile recorded it.

    ``t`` is the intended send time in open-loop mode and the actual one in closed-loop mode;
    ``latency_ms`` runs from ``t``; ``late_ms`` is how much later than intended it was sent;
    ``status`` is the HTTP status (0: no answer, or dropped at the outstanding limit);
    ``measured``: inside its process's measured interval (after the warm-up, before the end)."""

    t: float
    latency_ms: float
    status: int
    variant: str
    kind: str
    late_ms: float
    measured: bool


def read_results(path: Path) -> dict[str, Any]:
    """The locustfile's results: metadata, merged rows and windows (histograms encoded)."""
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise RunError(f"Locust wrote no readable results at {path}: {exc}") from exc


def read_raw(run_dir: Path, stem: str = "requests") -> list[Sample]:
    """Every process's raw dump in ``run_dir`` (``STEM-INDEX.jsonl``, from --raw-requests)."""
    files = sorted(run_dir.glob(f"{stem}-*.jsonl"))
    if not files:
        raise RunError(f"no raw dump {stem}-*.jsonl in {run_dir}: run with --raw-requests")
    return [Sample(*json.loads(line)) for f in files for line in f.read_text().splitlines()]


def _counts(data: dict[str, Any], digits: int | None = None) -> Counts:
    counts = Counts() if digits is None else Counts(digits)
    counts.merge(data)
    return counts


def summarize(name: str, counts: Counts, seconds: float) -> dict[str, Any]:
    """Counts, failures, requests/s and latency percentiles (successful requests)."""
    row: dict[str, Any] = {
        "name": name,
        "requests": counts.requests,
        "failures": counts.failures,
        "failure_pct": 100.0 * counts.failures / counts.requests if counts.requests else 0.0,
        "dropped": counts.dropped,
        "late": counts.late,
        "rps": (counts.requests - counts.dropped) / seconds if seconds > 0 else 0.0,
    }
    for key, q in PERCENTILES.items():  # a bucket's end may lie above the largest sample
        value = hist_percentile_ms(counts.hist, q)
        row[f"{key}_ms"] = None if value is None else min(value, counts.max_ms or value)
    row["max_ms"] = counts.max_ms
    return row


def summary_rows(results: dict[str, Any], seconds: float) -> list[dict[str, Any]]:
    """Rows for predictions overall, each variant, and feedback, over the measured interval."""
    names = sorted(results["rows"], key=lambda n: (ROW_ORDER.get(n, 1), n))
    if "all" not in names:
        names.insert(0, "all")
    empty = Counts().dump()
    return [summarize(n, _counts(results["rows"].get(n, empty)), seconds) for n in names]


def windows(results: dict[str, Any], total_s: float, step_s: float = 1.0) -> list[dict[str, Any]]:
    """Per 1-second window: requests sent, failures, p50/p90/p99 overall and p99 per variant."""
    found = {(int(s), name): data for s, name, data in results["windows"]}
    variants = sorted({name for _, name in found if name not in ("all", "feedback")})
    out = []
    for second in range(math.ceil(total_s / step_s)):
        overall = _counts(found.get((second, "all"), Counts().dump()), WINDOW_DIGITS)
        point: dict[str, Any] = {
            "t_s": float(second * step_s),
            "sent_per_s": overall.requests / step_s,
            "failures": overall.failures,
        }
        for key in ("p50", "p90", "p99"):
            point[f"{key}_ms"] = hist_percentile_ms(overall.hist, PERCENTILES[key])
        for variant in variants:
            data = found.get((second, variant))
            point[f"p99_ms[{variant}]"] = (
                hist_percentile_ms(_counts(data, WINDOW_DIGITS).hist, 99) if data else None
            )
        out.append(point)
    return out
