"""Exact statistics from raw per-request rows (Locust rounds its stored latencies)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from loadtests.slo import PERCENTILES
from tuneserve.errors import RunError
from tuneserve.percentiles import percentile, percentiles


class Sample(NamedTuple):
    """One request as the locustfile recorded it.

    ``t`` is the intended send time in open-loop mode and the actual one in closed-loop mode;
    ``latency_ms`` runs from ``t``; ``late_ms`` is how much later than intended it was sent;
    ``status`` is the HTTP status (0: no answer, or dropped at the outstanding limit)."""

    t: float
    latency_ms: float
    status: int
    variant: str
    kind: str
    late_ms: float


def read_samples(path: Path) -> tuple[dict[str, Any], list[Sample]]:
    """The locustfile's raw file: its metadata and the rows."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"Locust wrote no readable raw rows at {path}: {exc}") from exc
    return data["meta"], [Sample(*row) for row in data["rows"]]


def ok(sample: Sample) -> bool:
    return 200 <= sample.status < 300


def summarize(name: str, samples: list[Sample], seconds: float) -> dict[str, Any]:
    """Counts, failures, requests/s and exact latency percentiles (successful requests)."""
    latencies = np.array([s.latency_ms for s in samples if ok(s)])
    failures = sum(1 for s in samples if not ok(s))
    row: dict[str, Any] = {
        "name": name,
        "requests": len(samples),
        "failures": failures,
        "failure_pct": 100.0 * failures / len(samples) if samples else 0.0,
        "dropped": sum(1 for s in samples if s.kind == "dropped"),
        "late": 0,
        "rps": sum(1 for s in samples if s.kind != "dropped") / seconds if seconds > 0 else 0.0,
    }
    exact = percentiles(latencies, list(PERCENTILES.values())) if len(latencies) else {}
    for key, q in PERCENTILES.items():
        row[f"{key}_ms"] = exact.get(q)
    row["max_ms"] = float(latencies.max()) if len(latencies) else None
    return row


def summary_rows(
    samples: list[Sample], start: float, end: float, late_ms: float
) -> list[dict[str, Any]]:
    """Rows for predictions overall, each variant, and feedback, over ``[start, end)``."""
    window = [s for s in samples if start <= s.t < end]
    seconds = end - start
    predict = [s for s in window if s.kind in ("predict", "dropped")]
    rows = [summarize("all", predict, seconds)]
    rows[0]["late"] = sum(1 for s in predict if s.late_ms > late_ms)
    for variant in sorted({s.variant for s in predict if s.variant != "-"}):
        row = summarize(variant, [s for s in predict if s.variant == variant], seconds)
        row["late"] = sum(1 for s in predict if s.variant == variant and s.late_ms > late_ms)
        rows.append(row)
    feedback = [s for s in window if s.kind == "feedback"]
    if feedback:
        rows.append(summarize("feedback", feedback, seconds))
    return rows


def windows(samples: list[Sample], start: float, end: float, step_s: float = 1.0) -> list[dict]:
    """Per time window: requests sent, failures, and p50/p90/p99 overall and p99 per variant."""
    predict = [s for s in samples if s.kind in ("predict", "dropped") and start <= s.t < end]
    variants = sorted({s.variant for s in predict if s.variant != "-"})
    out = []
    edges = np.arange(start, end + 1e-9, step_s)
    for lo, hi in itertools.pairwise(edges):
        chunk = [s for s in predict if lo <= s.t < hi]
        lat = np.array([s.latency_ms for s in chunk if ok(s)])
        point: dict[str, Any] = {
            "t_s": float(lo - start),
            "sent_per_s": len(chunk) / step_s,
            "failures": sum(1 for s in chunk if not ok(s)),
        }
        for key in ("p50", "p90", "p99"):
            q = PERCENTILES[key]
            point[f"{key}_ms"] = percentile(lat, q) if len(lat) else None
        for variant in variants:
            vl = [s.latency_ms for s in chunk if s.variant == variant and ok(s)]
            point[f"p99_ms[{variant}]"] = percentile(vl, 99) if vl else None
        out.append(point)
    return out
