"""Shadow traffic: a share of live requests is also scored by a shadow variant, after answering.

A request only offers a job (never waiting): the job goes on a bounded queue drained by one
thread per worker, which starts a job only while the worker has no prediction in flight (so the
live answer is on its way before its shadow run starts) and runs at the lowest CPU priority
(nice 19, Linux), so that a live request arriving during a shadow run gets the cores first.
Jobs that find the queue full, or that wait longer than ``max_age_ms`` for an idle moment (a
busy worker), are skipped and counted, never queued without bound. Each shadow answer is
compared with the live one (``tuneserve_shadow_predictions_total`` by outcome
``agree``/``disagree``) and written to the store's ``shadow`` table through the prediction log,
where feedback later pairs them for McNemar's test in the report.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

from service import metrics
from service.model import VariantModel
from service.predlog import PredictionLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowJob:
    """What the shadow run needs of a live request."""

    model: VariantModel  # the shadow variant's model
    texts: list[str]
    prediction_ids: list[str]
    live_variant: str
    live_labels: list[str]
    queued_at: float  # time.monotonic()


def lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: per-thread nice 19).

    With one ONNX Runtime thread per inference (the CPU default) the model runs on the calling
    thread, so this covers all of a shadow run's work; elsewhere it does nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError) as exc:
        logger.info("shadow thread keeps its priority: %s", exc)


class ShadowScorer:
    """One worker's shadow queue and the thread that drains it while the worker is idle."""

    def __init__(
        self, log: PredictionLog, idle: threading.Event, max_pending: int, max_age_ms: float
    ) -> None:
        self.log = log
        self.idle = idle
        self.max_age_s = max_age_ms / 1000.0
        self.queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="tuneserve-shadow", daemon=True)
        self._thread.start()

    def offer(self, job: ShadowJob) -> bool:
        """Queue a job; False (and counted as skipped) when the queue is full."""
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            metrics.SHADOW.labels(variant=job.model.name, outcome="skipped").inc(len(job.texts))
            return False
        return True

    def _run(self) -> None:
        lower_priority()
        while (job := self.queue.get()) is not None:
            left = job.queued_at + self.max_age_s - time.monotonic()
            if left <= 0 or not self.idle.wait(left):  # too old, or the worker stayed busy
                metrics.SHADOW.labels(variant=job.model.name, outcome="skipped").inc(len(job.texts))
                continue
            try:
                self._score(job)
            except Exception as exc:  # a failing shadow must never touch the live path
                metrics.SHADOW.labels(variant=job.model.name, outcome="failed").inc(len(job.texts))
                logger.warning("shadow %s failed: %s", job.model.name, type(exc).__name__)

    def _score(self, job: ShadowJob) -> None:
        model = job.model
        started = time.perf_counter()
        probs = model.infer(model.encode(job.texts))
        latency_ms = (time.perf_counter() - started) * 1000
        now = time.time()
        for prediction_id, live_label, row in zip(
            job.prediction_ids, job.live_labels, probs, strict=True
        ):
            label = model.labels[int(row.argmax())]
            outcome = "agree" if label == live_label else "disagree"
            metrics.SHADOW.labels(variant=model.name, outcome=outcome).inc()
            self.log.submit(
                {
                    "prediction_id": prediction_id,
                    "ts": now,
                    "variant": model.name,
                    "model_version": model.version,
                    "live_variant": job.live_variant,
                    "live_label": live_label,
                    "label": label,
                    "score": float(row.max()),
                    "latency_ms": latency_ms,
                },
                table="shadow",
            )

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop after the jobs already queued (each still waits for an idle worker)."""
        try:
            self.queue.put(None, timeout=timeout_s)
        except queue.Full:
            logger.warning("shadow queue still full at shutdown; pending jobs are dropped")
            return
        self._thread.join(timeout_s)
