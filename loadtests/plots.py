"""PNG plots of a load test: latency percentiles over time, and latency against offered load."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_over_time(points: list[dict[str, Any]], warmup_s: float, title: str, path: Path) -> None:
    """p50/p90/p99 per second (and each variant's p99), the warm-up shaded."""
    plt = _pyplot()
    fig, (ax, rate_ax) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})  # fmt: skip
    ts = [p["t_s"] + 0.5 for p in points]  # the middle of each 1-second window
    for key, style in (("p50_ms", "-"), ("p90_ms", "--"), ("p99_ms", "-")):
        ax.plot(ts, [p[key] for p in points], style, label=key.removesuffix("_ms"))
    for key in sorted(k for k in (points[0] if points else {}) if k.startswith("p99_ms[")):
        ax.plot(ts, [p[key] for p in points], ":", label="p99 " + key[7:-1])
    ax.axvspan(0, warmup_s, color="grey", alpha=0.15, label="warm-up (excluded)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    rate_ax.bar(ts, [p["sent_per_s"] for p in points], width=0.9, label="sent")
    rate_ax.bar(ts, [p["failures"] for p in points], width=0.9, color="red", label="failed")
    rate_ax.set_xlim(left=0)
    rate_ax.set_ylabel("requests/s")
    rate_ax.set_xlabel("seconds since start")
    rate_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_vs_load(points: list[dict[str, Any]], title: str, path: Path, slo_ms: float | None,
                 xlabel: str) -> None:  # fmt: skip
    """p50 and p99 against offered load (per second of one run, or per find-max trial)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    points = [p for p in points if p.get("p99_ms") is not None]
    points.sort(key=lambda p: p["offered_rps"])
    xs = [p["offered_rps"] for p in points]
    ax.plot(xs, [p["p50_ms"] for p in points], "o-", label="p50")
    ax.plot(xs, [p["p99_ms"] for p in points], "s-", label="p99")
    if slo_ms is not None:
        ax.axhline(slo_ms, color="grey", linestyle="--", linewidth=1, label="SLO p99")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
