"""The worker's memory gauges: set at once, then by the background sampler, never by a request."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from service.memory import MemorySampler, worker_name
from tuneserve.memory import rss_bytes

RSS = "tuneserve_process_resident_memory_bytes"


def _gauge(worker: str) -> float | None:
    return REGISTRY.get_sample_value(RSS, {"worker": worker})


def test_the_sampler_sets_the_gauge_and_follows_the_process() -> None:
    sampler = MemorySampler(cuda=False, interval_s=0.05, worker="test-1")
    try:
        first = _gauge("test-1")
        assert first is not None and abs(first - rss_bytes()) < 16 * 2**20
        # grow the process by 64 MiB of written pages (freed pages it reuses are resident
        # already, so keep allocating until its RSS has grown that much)
        blocks: list[bytes] = []
        while rss_bytes() < first + 64 * 2**20 and len(blocks) < 64:
            blocks.append(b"\x01" * (16 * 2**20))
        grown = rss_bytes()
        assert grown >= first + 64 * 2**20
        deadline = time.monotonic() + 5
        while (_gauge("test-1") or 0) < grown - 8 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (_gauge("test-1") or 0) >= grown - 8 * 2**20, "the sampler did not follow"
        del blocks
    finally:
        sampler.close()
    assert not sampler._thread.is_alive()
    # on CPU no device series is written
    assert REGISTRY.get_sample_value("tuneserve_device_memory_bytes", {"worker": "test-1",
                                     "device": "cuda:0"}) is None  # fmt: skip


def test_outside_bentoml_serve_the_worker_is_0() -> None:
    assert worker_name() == "0"
