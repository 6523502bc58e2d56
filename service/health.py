"""The experiment store's health as this process last saw it: up, or degraded since when and why.

Every store connection of the worker reports here (service/pool.py). A transition is said once:
``tuneserve_store_up`` (0 or 1) and one log line (a warning when the store is lost, an info line
when it is back); /readyz shows the status in its body.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from service import metrics

logger = logging.getLogger(__name__)


class StoreHealth:
    """Whether this process last reached the store; transitions are logged once and gauged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.up = True
        self.up_since = 0.0  # monotonic time the store was last seen back
        self.down_since: float | None = None
        self.error = ""
        metrics.STORE_UP.set(1)

    def ok(self) -> None:
        """A statement reached the store."""
        if self.up:
            return
        with self._lock:
            if self.up:
                return
            down_s = time.monotonic() - (self.down_since or time.monotonic())
            self.up, self.down_since, self.error = True, None, ""
            self.up_since = time.monotonic()
            metrics.STORE_UP.set(1)
        logger.info("experiment store reachable again after %.1f s; feedback is accepted, "
                    "queued prediction rows are being written", down_s)  # fmt: skip

    def failed(self, exc: BaseException, started: float) -> None:
        """A statement begun at ``started`` (monotonic) could not reach the store; one begun
        before the store was last seen back says nothing new."""
        with self._lock:
            if not self.up or started < self.up_since:
                return
            self.up, self.down_since = False, time.monotonic()
            self.error = type(exc).__name__
            metrics.STORE_UP.set(0)
        logger.warning("experiment store unreachable (%s: %s): feedback answers 503, "
                       "prediction rows wait in the log queue", type(exc).__name__,
                       _one_line(exc))  # fmt: skip

    def status(self) -> dict[str, Any]:
        """For /readyz: ``up``, or ``degraded`` with the error kind and for how long."""
        if self.up:
            return {"store": "up"}
        down_s = time.monotonic() - (self.down_since or time.monotonic())
        return {"store": "degraded", "store_error": self.error, "store_down_s": round(down_s, 1)}


HEALTH = StoreHealth()  # one per process: every store connection of the worker reports here


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
