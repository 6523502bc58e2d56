"""The worker's memory as gauges: resident set size, and on CUDA its device memory, sampled by a
background thread every SAMPLE_S seconds, never on the request path.

prometheus_client's own process collector is off in multiprocess mode (which BentoML uses), so
the worker reports itself: one series per BentoML worker index (1..N, the same index when
BentoML replaces a worker), gone from /metrics once the worker is dead (``livemostrecent``).
"""

from __future__ import annotations

import logging
import threading

from service import metrics
from tuneserve.memory import cuda_memory_bytes, rss_bytes

logger = logging.getLogger(__name__)
SAMPLE_S = 2.0


def worker_name() -> str:
    """This worker's BentoML index ("1", "2", ...), or "0" outside `bentoml serve` (tests)."""
    try:  # BentoML's own record of the --worker-id it started this process with
        from bentoml._internal.context import server_context
    except ImportError:
        return "0"
    index = server_context.worker_index
    return "0" if index is None else str(index)


class MemorySampler:
    """Sets tuneserve_process_resident_memory_bytes (and, with ``cuda``,
    tuneserve_device_memory_bytes) for this worker now and every ``interval_s``."""

    def __init__(self, cuda: bool, interval_s: float = SAMPLE_S, worker: str | None = None):
        self.cuda, self.interval_s = cuda, interval_s
        self.worker = worker_name() if worker is None else worker
        self._stop = threading.Event()
        self.sample()  # the gauges exist from the start
        self._thread = threading.Thread(target=self._run, name="tuneserve-memory", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        """Read this process's memory once and set the gauges."""
        metrics.PROCESS_MEMORY.labels(worker=self.worker).set(rss_bytes())
        if self.cuda:
            for device, used in cuda_memory_bytes().items():
                metrics.DEVICE_MEMORY.labels(worker=self.worker, device=device).set(used)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
                failing = False
            except Exception as exc:  # a failed read must not end the loop
                if not failing:
                    failing = True
                    logger.warning("memory sample failed: %s", exc)

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(2)
