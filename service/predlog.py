"""The prediction log (and shadow results), written off the request path: a bounded queue
drained by one thread.

A request only appends its rows to the queue (never waiting, and never waking the writer: a
wake-up per row cost the event loop a thread hand-off per request); the writer thread wakes every
``flush_interval_s``, or as soon as ``batch_size`` rows wait, and stores what queued in batches,
so light traffic costs one commit per interval rather than one per request. While the store
cannot be reached, the writer keeps its batch and tries again with backoff (up to RETRY_MAX_S
between tries) while new rows wait in the queue (``tuneserve_log_queued_rows``); they are written
when the store returns. When the queue is full, rows are dropped and counted in
``tuneserve_log_dropped_total``, never silently. Closing flushes what is queued (while the store
is away, for as long as close's timeout allows).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from service import metrics
from service.health import HEALTH
from service.pool import StoreUnavailableError
from service.store import Store

logger = logging.getLogger(__name__)
RETRY_FIRST_S = 0.2  # the writer's first wait for an unreachable store, doubled up to RETRY_MAX_S
RETRY_MAX_S = 2.0


class PredictionLog:
    """Queue + writer thread in front of a :class:`Store`."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        max_queue: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 0.2,
    ) -> None:
        # deque.append and popleft are atomic: the queue needs no lock, and submit no wake-up
        self.queue: deque[tuple[str, dict[str, Any]]] = deque()
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.store = open_store()
        self._wake = threading.Event()
        self._stopping = False
        self._closing = threading.Event()  # wakes a writer waiting for the store
        self._give_up_at = float("inf")  # set by close: when a flush stops waiting for the store
        self._thread = threading.Thread(target=self._run, name="tuneserve-log", daemon=True)
        self._thread.start()

    def submit(self, row: dict[str, Any], table: str = "predictions") -> bool:
        """Queue one row of ``predictions`` or ``shadow``; False (and counted) when full."""
        queued = len(self.queue)
        if queued >= self.max_queue:
            metrics.LOG_DROPPED.labels(kind="queue_full").inc()
            return False
        self.queue.append((table, row))
        if queued + 1 == self.batch_size:  # a full batch need not wait for the interval
            self._wake.set()
        return True

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stopping  # read before draining: rows queued before close are kept
            while self.queue:
                count = min(len(self.queue), self.batch_size)
                self._write([self.queue.popleft() for _ in range(count)])
            metrics.LOG_QUEUED.set(len(self.queue))
            if stopping:
                return

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        tables: dict[str, list[dict[str, Any]]] = {}
        for table, row in batch:
            tables.setdefault(table, []).append(row)
        for table, rows in tables.items():
            try:
                self._write_rows(table, rows)
            except Exception as exc:  # a store failure must not take the service down
                metrics.LOG_DROPPED.labels(kind="write_failed").inc(len(rows))
                logger.error("prediction log: %d %s rows not written: %s", len(rows), table,
                             type(exc).__name__)  # fmt: skip
            else:
                metrics.LOG_WRITTEN.inc(len(rows))

    def _write_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Store ``rows``, waiting for an unreachable store (until close gives up on it)."""
        wait_s = RETRY_FIRST_S
        while True:
            if time.monotonic() >= self._give_up_at and not HEALTH.up:  # closing: count the rest
                raise StoreUnavailableError("the experiment store is still unreachable")
            try:
                self.store.log_rows(table, rows)  # rows already stored are kept: may run twice
                return
            except StoreUnavailableError:
                if time.monotonic() >= self._give_up_at:
                    raise
                metrics.LOG_QUEUED.set(len(self.queue) + len(rows))
                self._closing.wait(min(wait_s, max(self._give_up_at - time.monotonic(), 0.0)))
                wait_s = min(wait_s * 2, RETRY_MAX_S)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued, then stop the writer."""
        self._give_up_at = time.monotonic() + timeout_s * 0.8  # leaves time to count the rest
        self._stopping = True
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.error("prediction log: flush did not finish in %.0f s", timeout_s)
        self.store.close()
