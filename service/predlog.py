"""The prediction log (and shadow results), written off the request path: a bounded queue
drained by one thread.

A request only puts its rows on the queue (never waiting); the writer thread stores them in
batches, gathering rows for up to ``flush_interval_s`` so that light traffic costs one commit
per interval rather than one per request. While the store cannot be reached, the writer keeps
its batch and tries again with backoff (up to RETRY_MAX_S between tries), and new rows wait in
the queue; they are written when the store returns. When the queue is full, rows are dropped and
counted in ``tuneserve_log_dropped_total``, never silently. Closing flushes what is queued (while
the store is away, for as long as close's timeout allows).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from service import metrics
from service.pool import HEALTH, StoreUnavailableError
from service.store import Store

logger = logging.getLogger(__name__)
_STOP = object()
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
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.store = open_store()
        self._closing = threading.Event()
        self._give_up_at = float("inf")  # set by close: when a flush stops waiting for the store
        self._thread = threading.Thread(target=self._run, name="tuneserve-log", daemon=True)
        self._thread.start()

    def submit(self, row: dict[str, Any], table: str = "predictions") -> bool:
        """Queue one row of ``predictions`` or ``shadow``; False (and counted) when full."""
        try:
            self.queue.put_nowait((table, row))
        except queue.Full:
            metrics.LOG_DROPPED.labels(kind="queue_full").inc()
            return False
        metrics.LOG_QUEUED.set(self.queue.qsize())
        return True

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self.queue.get()
            batch: list[tuple[str, dict[str, Any]]] = []
            deadline = time.monotonic() + self.flush_interval_s
            while item is not _STOP:  # gather for a moment: one commit for many rows
                batch.append(item)
                if len(batch) >= self.batch_size:
                    break
                try:
                    item = self.queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    break
            stopping = item is _STOP
            if batch:
                self._write(batch)
            metrics.LOG_QUEUED.set(self.queue.qsize())

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
                metrics.LOG_QUEUED.set(self.queue.qsize() + len(rows))
                self._closing.wait(min(wait_s, max(self._give_up_at - time.monotonic(), 0.0)))
                wait_s = min(wait_s * 2, RETRY_MAX_S)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued, then stop the writer."""
        self._give_up_at = time.monotonic() + timeout_s * 0.8  # leaves time to count the rest
        self._closing.set()
        self.queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.error("prediction log: flush did not finish in %.0f s", timeout_s)
        self.store.close()
