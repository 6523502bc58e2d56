"""The server's own memory during a load test: its /metrics read every SAMPLE_S seconds (each
worker's resident set size, and its CUDA memory where it runs on CUDA), and what it serves
(GET /models), summarised per worker as peak and mean.

The figures are the service's own (service/memory.py samples them inside each worker), not the
load generator's. A server without those gauges (another service, an older tuneserve) gives a
section that says so instead of numbers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)
SAMPLE_S = 1.0
RSS = "tuneserve_process_resident_memory_bytes"
DEVICE = "tuneserve_device_memory_bytes"
MIB = 2**20


def parse_memory(page: str) -> dict[str, dict[str, float]]:
    """From a /metrics page: {"rss": {worker: bytes}, "device": {"worker/device": bytes}}."""
    found: dict[str, dict[str, float]] = {"rss": {}, "device": {}}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == RSS:
                found["rss"][sample.labels["worker"]] = sample.value
            elif sample.name == DEVICE:
                key = f"{sample.labels['worker']}/{sample.labels['device']}"
                found["device"][key] = sample.value
    return found


def _stats(values: list[float]) -> dict[str, float]:
    return {"peak_mib": round(max(values) / MIB, 1),
            "mean_mib": round(sum(values) / len(values) / MIB, 1)}  # fmt: skip


def summarise(samples: list[dict[str, Any]], start: float = 0.0,
              end: float = float("inf")) -> dict[str, Any]:  # fmt: skip
    """Peak and mean per worker (and per worker and device), and of the workers' sum, over the
    samples taken from ``start`` to ``end`` (epoch seconds)."""
    chosen = [s for s in samples if start <= s["t"] <= end and s["rss"]]
    if not chosen:
        return {"samples": 0}
    per_worker: dict[str, list[float]] = {}
    per_device: dict[str, list[float]] = {}
    for s in chosen:
        for worker, value in s["rss"].items():
            per_worker.setdefault(worker, []).append(value)
        for key, value in s["device"].items():
            per_device.setdefault(key, []).append(value)
    workers = {w: _stats(v) for w, v in sorted(per_worker.items())}
    section: dict[str, Any] = {
        "samples": len(chosen),
        "workers": len(workers),
        "rss_per_worker": workers,
        "rss_worker_peak_mib": max(w["peak_mib"] for w in workers.values()),
        "rss_worker_mean_mib": round(
            sum(w["mean_mib"] for w in workers.values()) / len(workers), 1
        ),
        "rss_total": _stats([sum(s["rss"].values()) for s in chosen]),
    }
    if per_device:
        devices = {k: _stats(v) for k, v in sorted(per_device.items())}
        section |= {
            "device_per_worker": devices,
            "device_worker_peak_mib": max(d["peak_mib"] for d in devices.values()),
            "device_total": _stats([sum(s["device"].values()) for s in chosen if s["device"]]),
        }
    return section


class ServerMemory:
    """A background thread that reads ``host``/metrics every ``interval_s`` while the run lasts
    (a context manager); ``summary()`` and ``summarise(samples, ...)`` turn it into figures."""

    def __init__(
        self, host: str, interval_s: float = SAMPLE_S, headers: dict[str, str] | None = None
    ) -> None:
        self.host, self.interval_s, self.headers = host, interval_s, headers or {}
        self.samples: list[dict[str, Any]] = []
        self.server: dict[str, Any] = {}
        self.problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-memory", daemon=True)

    def _get(self, path: str) -> str:
        request = urllib.request.Request(f"{self.host}{path}", headers=self.headers)
        with urllib.request.urlopen(request, timeout=5) as answer:
            return str(answer.read().decode("utf-8", errors="replace"))

    def _describe_server(self) -> None:
        try:
            models = json.loads(self._get("/models"))
            self.server = {
                "device": models.get("device"),
                "providers": {v["name"]: v.get("provider") for v in models.get("variants", [])},
                "profiles": {v["name"]: v.get("profile") for v in models.get("variants", [])},
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.server = {"note": f"GET /models gave no tuneserve summary ({exc})"}

    def sample(self) -> None:
        """One read of /metrics (a failed read is noted, not raised)."""
        try:
            found = parse_memory(self._get("/metrics"))
        except (OSError, ValueError) as exc:
            self.problem = f"GET /metrics failed or was not Prometheus text ({exc})"
            return
        if not found["rss"]:
            self.problem = f"/metrics has no {RSS} (not a tuneserve server with memory gauges)"
            return
        self.samples.append({"t": time.time(), **found})

    def _run(self) -> None:
        self._describe_server()
        self.sample()
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> ServerMemory:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self._stop.set()
        self._thread.join(10)

    def summary(self, start: float = 0.0, end: float = float("inf")) -> dict[str, Any]:
        """The report's section: where the figures come from, the server, the figures."""
        figures = summarise(self.samples, start, end)
        section = {
            "source": f"the server's GET /metrics ({RSS}, {DEVICE}) every {self.interval_s:g} s",
            "server": self.server,
            **figures,
        }
        if not figures["samples"]:
            section["note"] = self.problem or "no sample fell inside the measured window"
        return section


def memory_line(section: dict[str, Any] | None) -> str:
    """One sentence for the console and report.md: RSS per worker, and device memory."""
    if not section or not section.get("samples"):
        note = (section or {}).get("note", "not sampled")
        return f"server memory: not measured ({note})"
    text = (f"server memory ({section['samples']} samples of /metrics, {section['workers']} "
            f"worker(s)): RSS per worker peak {section['rss_worker_peak_mib']:.0f} MiB, mean "
            f"{section['rss_worker_mean_mib']:.0f} MiB; all workers peak "
            f"{section['rss_total']['peak_mib']:.0f} MiB")  # fmt: skip
    if "device_worker_peak_mib" in section:
        text += f"; CUDA memory per worker peak {section['device_worker_peak_mib']:.0f} MiB"
    return text
