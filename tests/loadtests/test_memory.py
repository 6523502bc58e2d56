"""The load test's memory section from /metrics pages that prometheus_client itself writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from loadtests.memory import memory_line, parse_memory, summarise


def _page(rss: dict[str, float], device: dict[tuple[str, str], float] | None = None) -> str:
    """A /metrics page written by prometheus_client from gauges declared as the service's."""
    registry = CollectorRegistry()
    gauge = Gauge("tuneserve_process_resident_memory_bytes", "RSS", ["worker"], registry=registry)
    for worker, value in rss.items():
        gauge.labels(worker=worker).set(value)
    if device:
        cuda = Gauge("tuneserve_device_memory_bytes", "CUDA", ["worker", "device"],
                     registry=registry)  # fmt: skip
        for (worker, name), value in device.items():
            cuda.labels(worker=worker, device=name).set(value)
    return generate_latest(registry).decode()


def test_peak_and_mean_per_worker_and_of_their_sum() -> None:
    mib = 2**20
    pages = [_page({"1": 100 * mib, "2": 300 * mib}), _page({"1": 200 * mib, "2": 100 * mib}),
             _page({"1": 900 * mib, "2": 900 * mib})]  # fmt: skip
    samples = [{"t": float(t), **parse_memory(p)} for t, p in enumerate(pages)]
    section = summarise(samples, start=0, end=1)  # the third sample is outside the window
    assert section["samples"] == 2 and section["workers"] == 2
    assert section["rss_per_worker"] == {
        "1": {"peak_mib": 200.0, "mean_mib": 150.0},
        "2": {"peak_mib": 300.0, "mean_mib": 200.0},
    }
    assert section["rss_worker_peak_mib"] == 300.0 and section["rss_worker_mean_mib"] == 175.0
    assert section["rss_total"] == {"peak_mib": 400.0, "mean_mib": 350.0}
    assert "device_worker_peak_mib" not in section
    assert "RSS per worker peak 300 MiB, mean 175 MiB; all workers peak 400 MiB" in memory_line(
        section)  # fmt: skip


def test_cuda_figures_per_worker_and_device() -> None:
    page = _page({"1": 2**30}, {("1", "cuda:0"): 512 * 2**20})
    section = summarise([{"t": 0.0, **parse_memory(page)}])
    assert section["device_per_worker"] == {"1/cuda:0": {"peak_mib": 512.0, "mean_mib": 512.0}}
    assert "CUDA memory per worker peak 512 MiB" in memory_line(section)


def test_no_samples_says_why() -> None:
    assert summarise([]) == {"samples": 0}
    assert memory_line({"samples": 0, "note": "no tuneserve_process_resident_memory_bytes"}) == (
        "server memory: not measured (no tuneserve_process_resident_memory_bytes)")  # fmt: skip
