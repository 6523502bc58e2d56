"""The prediction path without HTTP: route, run under a deadline, answer, log, count.

``Predictor`` holds every variant's model and runner for one worker (service/swap.py, which
also swaps them at runtime), and the worker's experiment (service/experiment/), which chooses
the variant. It takes texts already checked
(service/validation.py). The BentoML service (app.py) only parses HTTP and calls it, so the same
path runs in tests without a server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from service import metrics
from service.batching import Runner, make_runner
from service.catalog import ACTIVE, Catalog, served_variants
from service.config import ServingConfig
from service.dialect import is_url
from service.errors import (
    DeadlineError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from service.experiment import Experiment
from service.ids import PredictionIds, load_key
from service.masking import Masker
from service.memory import MemorySampler
from service.model import VariantModel
from service.pool import StoreUnavailableError
from service.predlog import PredictionLog
from service.routing import Assignment
from service.shadow import ShadowJob, ShadowScorer
from service.store import Store, unit_hash
from service.swap import Variants
from service.workers import mark_ready

logger = logging.getLogger(__name__)

# Beyond this many characters, tokenising leaves the event loop for a worker thread.
_LOOP_TOKENIZE_CHARS = 20_000


@dataclass(frozen=True)
class Answers:
    """What one request got: the variant that answered (and how it was chosen), that model's
    version, and one answer per text, in input order."""

    assignment: Assignment
    model_version: str
    predictions: list[dict[str, Any]]

    @property
    def variant(self) -> str:
        return self.assignment.variant


class Predictor:
    """Every variant of one worker: models, runners, the experiment, readiness."""

    def __init__(self, settings: ServingConfig) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(settings.threads, thread_name_prefix="tuneserve-infer")
        self.batching = settings.batching_mode()
        experiment = settings.experiment
        store, store_at = settings.store, settings.store.location()  # SQLite file or PG URL
        self.store = Store(store_at, store.busy_timeout_ms, pool=store.pool())
        catalog = Catalog(self.store)  # the variants changed at runtime (service/swap.py)
        catalog_version, entries = catalog.version(), catalog.entries()
        expected = {e.name: e.model_version for e in entries if e.status == ACTIVE}
        served = served_variants(settings, entries)
        self.variants = Variants(settings, served, self._runner, expected)
        self.ids = PredictionIds(
            load_key(experiment.id_key_env, experiment.id_key_file, shared=is_url(store_at))
        )
        log_pool = store.pool(log=True)
        self.log = PredictionLog(
            lambda: Store(store_at, store.busy_timeout_ms, durable=False, pool=log_pool),
            max_queue=store.log_queue_size,
        )
        self.mask = Masker(settings.masking)  # stored text is masked first (store.log_text)
        self.idle = threading.Event()  # set while no prediction is in flight in this worker
        self.idle.set()
        self._inflight = 0
        self.shadow = ShadowScorer(
            self.log, self.idle, settings.shadow.max_pending, settings.shadow.max_age_ms
        )
        self.experiment = Experiment(settings, self.store)  # sets the weight gauges
        self.variants.attach(catalog, self.experiment, catalog_version)
        self.ready = False
        self.warmup_error: BaseException | None = None
        metrics.READY.set(0)
        cuda = any(m.provider == "CUDAExecutionProvider" for m in self.models.values())
        self.memory = MemorySampler(cuda)  # the worker's memory gauges, off the request path
        logger.info(
            "loaded variants %s (batching %s, %d inference thread(s), %d ONNX Runtime thread(s))",
            ", ".join(f"{n}={m.version}" for n, m in self.models.items()),
            self.batching,
            settings.threads,
            settings.ort_threads(),
        )

    @property
    def models(self) -> dict[str, VariantModel]:
        """Each served variant's model now (hot swaps change them: service/swap.py)."""
        return self.variants.models

    @property
    def labels(self) -> list[str]:
        """The labels feedback may name: those of the models served now."""
        return sorted({label for m in self.models.values() for label in m.labels})

    def _runner(self, model: VariantModel) -> Runner:
        batching = self.settings.batching
        return make_runner(
            self.batching, model, self.executor, batching.max_batch_size, batching.max_latency_ms
        )

    def warm_up(self) -> None:
        """Run every model a few times, then mark the worker ready."""
        started = time.perf_counter()
        try:
            for model in self.models.values():
                model.warm_up(self.settings.warmup_runs)
        except BaseException as exc:  # readiness stays false; /livez reports the failure
            self.warmup_error = exc
            logger.exception("warm-up failed; this worker will never become ready")
            return
        self.ready = True
        metrics.READY.set(1)
        mark_ready()  # for the sibling workers' /readyz (service/workers.py)
        logger.info("warm-up done in %.2f s; ready", time.perf_counter() - started)

    def start_warm_up(self) -> threading.Thread:
        """Warm up in the background so /livez answers while the models warm."""
        thread = threading.Thread(target=self.warm_up, name="tuneserve-warmup", daemon=True)
        thread.start()
        return thread

    async def predict(
        self, texts: list[str], forced: str | None = None, user_id: str | None = None
    ) -> Answers:
        """Answers for ``texts`` (already checked) from one variant, under the deadline.

        ``user_id`` makes the assignment sticky; ``forced`` names the variant outright."""
        if not self.ready:
            raise OverloadedError(
                "the service is warming up its models; retry shortly",
                headers={"Retry-After": str(self.settings.limits.retry_after_s)},
            )
        started = time.perf_counter()
        router = self.experiment.router  # one state for the whole request, whatever lands
        assignment = router.choose(user_id=user_id, forced=forced)
        try:
            served = self.variants.acquire(assignment.variant)  # one model for the request
        except InvalidInputError:
            if assignment.forced:
                raise  # the caller named a variant that is gone: its error
            # routed by a state older than a hot swap's removal: route again by the newest
            router = self.experiment.router
            assignment = router.choose(user_id=user_id, forced=None)
            served = self._acquire_routed(assignment.variant)
        model = served.model
        hashed = unit_hash(router.salt, user_id) if user_id else None  # the salt in force
        self._inflight += 1
        self.idle.clear()
        try:
            probs, encodings = await self._run(model, served.runner, texts)
        except Exception as exc:  # not a cancellation: a client that went away is no failure
            kind = "deadline" if isinstance(exc, DeadlineError) else "internal"
            self._log_failure(assignment, model, texts, hashed, started, kind, router.salt)
            raise
        finally:
            self.variants.release(served)
            self._inflight -= 1
            if self._inflight == 0:
                self.idle.set()
        answers = []
        now, latency_ms = time.time(), (time.perf_counter() - started) * 1000
        for text, row, encoding in zip(texts, probs, encodings, strict=True):
            prediction = model.answer(row, encoding)
            self._count(assignment, prediction.label, prediction.score, prediction.truncated)
            prediction_id = self.ids.new()
            self.log.submit(
                self._row(assignment, model, prediction_id, now, hashed, latency_ms, router.salt)
                | {
                    "label": prediction.label,
                    "score": prediction.score,
                    "text": self.mask(text) if self.settings.store.log_text else None,
                }
            )
            answers.append(
                {
                    "prediction_id": prediction_id,
                    "variant": assignment.variant,
                    "model_version": model.version,
                    "label": prediction.label,
                    "score": prediction.score,
                    "scores": prediction.scores,
                    "truncated": prediction.truncated,
                    "forced": assignment.forced,
                }
            )
        self._offer_shadow(assignment, texts, answers)
        return Answers(assignment, model.version, answers)

    def _acquire_routed(self, variant: str) -> Any:
        """``variant``'s model for a routed request; 503 if a swap removed it again meanwhile."""
        try:
            return self.variants.acquire(variant)
        except InvalidInputError:
            raise UnavailableError(
                "the variants are being changed (hot swap); retry shortly",
                retry_after_s=self.settings.limits.retry_after_s,
            ) from None

    async def _run(
        self, model: VariantModel, runner: Runner, texts: list[str]
    ) -> tuple[Any, list[Any]]:
        """Tokenise ``texts`` with ``model`` and run them on its ``runner`` within the deadline."""
        deadline_ms = self.settings.limits.deadline_ms
        try:
            async with asyncio.timeout(deadline_ms / 1000.0):
                if sum(len(t) for t in texts) > _LOOP_TOKENIZE_CHARS:
                    loop = asyncio.get_running_loop()
                    encodings = await loop.run_in_executor(None, model.encode, texts)
                else:
                    encodings = model.encode(texts)
                return await runner.run(encodings), encodings
        except TimeoutError:
            raise DeadlineError(
                f"the prediction did not finish within {deadline_ms:g} ms"
            ) from None

    def _row(
        self,
        assignment: Assignment,
        model: VariantModel,
        prediction_id: str,
        ts: float,
        hashed: str | None,
        latency_ms: float,
        salt: str,
    ) -> dict[str, Any]:
        """The prediction-log columns every row of a request shares."""
        return {
            "id": prediction_id,
            "ts": ts,
            "variant": assignment.variant,
            "model_version": model.version,
            "unit": assignment.unit,
            "unit_hash": hashed,
            "forced": int(assignment.forced),
            "latency_ms": latency_ms,
            "error": None,
            "salt": salt,
        }

    def _log_failure(
        self,
        assignment: Assignment,
        model: VariantModel,
        texts: list[str],
        hashed: str | None,
        started: float,
        kind: str,
        salt: str,
    ) -> None:
        """A routed request failed: one error row per text (the report's error rate and the
        leader's store-wide guardrail window read them)."""
        latency_ms = (time.perf_counter() - started) * 1000
        now = time.time()
        for _ in texts:
            row = self._row(assignment, model, self.ids.new(), now, hashed, latency_ms, salt)
            self.log.submit(row | {"label": "", "score": 0.0, "error": kind})

    def _offer_shadow(
        self, assignment: Assignment, texts: list[str], answers: list[dict[str, Any]]
    ) -> None:
        """Hand a sampled share of requests to the shadow variant (scored after answering)."""
        shadow = self.experiment.shadow_for(assignment.variant)
        served = None if shadow is None else self.variants.served.get(shadow)
        if served is None:
            return
        model = served.model
        self.shadow.offer(
            ShadowJob(
                model=model,
                texts=texts,
                prediction_ids=[a["prediction_id"] for a in answers],
                live_variant=assignment.variant,
                live_labels=[a["label"] for a in answers],
                queued_at=time.monotonic(),
            )
        )

    async def feedback(self, prediction_id: Any, label: Any) -> dict[str, Any]:
        """Store feedback before answering; 404 for ids never issued, 400 for unknown labels."""
        if not isinstance(prediction_id, str) or not self.ids.is_ours(prediction_id):
            metrics.FEEDBACK.labels(variant="unknown", outcome="unknown_id").inc()
            raise NotFoundError("no prediction with this id was issued by this service")
        if not isinstance(label, str) or label not in self.labels:
            metrics.FEEDBACK.labels(variant="unknown", outcome="invalid_label").inc()
            raise InvalidInputError(
                f"label must be one of {', '.join(self.labels)} (the models' label map)"
            )
        loop = asyncio.get_running_loop()
        store = self.store
        try:
            result = await loop.run_in_executor(None, store.add_feedback, prediction_id, label)
        except StoreUnavailableError:  # not stored: say so, never a 2xx that would be lost
            metrics.FEEDBACK.labels(variant="unknown", outcome="unavailable").inc()
            retry_after_s = self.settings.store.retry_after_s
            raise UnavailableError(
                "the feedback was not stored: the experiment store cannot be reached right "
                f"now; send it again after {retry_after_s} s",
                retry_after_s=retry_after_s,
            ) from None
        try:
            variant = await loop.run_in_executor(None, store.variant_of, prediction_id)
        except StoreUnavailableError:  # stored already; only the metric's label is unknown
            variant = None
        metrics.FEEDBACK.labels(variant=variant or "pending", outcome=result.status).inc()
        return {"prediction_id": prediction_id, "label": result.label, "status": result.status}

    def _count(self, assignment: Assignment, label: str, score: float, truncated: bool) -> None:
        variant = assignment.variant
        metrics.PREDICTIONS.labels(variant=variant, label=label).inc()
        metrics.SCORE.labels(variant=variant).observe(score)
        if truncated:
            metrics.TRUNCATED.labels(variant=variant).inc()
        if assignment.forced:
            metrics.FORCED.labels(variant=variant).inc()

    def summary(self) -> dict[str, Any]:
        """GET /models: each variant's manifest summary plus serving settings."""
        shares = self.experiment.router.shares
        return {
            "ready": self.ready,
            "batching": self.batching,
            "device": self.settings.device,
            "control": self.experiment.control,
            "variants": [
                served.model.summary()
                | {"weight": shares.get(name, 0.0), "path": str(served.config.path)}
                for name, served in self.variants.served.items()
            ],
            "catalog": self.variants.summary(),
        }

    async def close(self) -> None:
        """Stop the batchers and the inference threads; flush the prediction log."""
        for served in self.variants.served.values():
            await served.runner.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.experiment.close()
        self.memory.close()
        self.shadow.close()
        self.log.close()
        self.store.close()
