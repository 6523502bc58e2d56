"""The prediction path without HTTP: validate, route, run under a deadline, answer, count.

``Predictor`` holds every variant's model and runner for one worker. The BentoML service (app.py)
only parses HTTP and calls it, so the same path runs in tests without a server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service import metrics
from service.admin import ExperimentState, apply_change, disable_variant, fits, initial_state
from service.batching import Runner, make_runner
from service.config import ServingConfig
from service.errors import (
    DeadlineError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
)
from service.guardrails import Guardrails, Trip, enabled_since
from service.ids import PredictionIds, load_key
from service.model import VariantModel
from service.monitors import AccuracyMonitor, TrafficMonitor
from service.predlog import PredictionLog
from service.routing import Assignment, Router
from service.shadow import ShadowJob, ShadowScorer
from service.stats import sample_ratio_check
from service.store import Store, unit_hash
from service.workers import mark_ready

logger = logging.getLogger(__name__)

STATE_POLL_S = 0.5  # how often a worker checks the store for a changed experiment state
STORE_CHECKS_EVERY = 5  # guardrail intervals between checks that read the store (accuracy, SRM)

# Beyond this many characters, tokenising leaves the event loop for a worker thread.
_LOOP_TOKENIZE_CHARS = 20_000


def check_texts(texts: Any, max_texts: int) -> list[str]:
    """The texts of a request, or an error naming what is wrong with them."""
    if not isinstance(texts, list) or not texts:
        raise InvalidInputError("texts must be a non-empty list of strings")
    if len(texts) > max_texts:
        raise PayloadTooLargeError(
            f"texts holds {len(texts)} items; at most {max_texts} per request "
            "(split the batch, or raise limits.max_batch_texts)"
        )
    return [check_text(text, f"texts[{i}]") for i, text in enumerate(texts)]


MAX_USER_ID_CHARS = 256


def check_user_id(value: Any) -> str | None:
    """A user id (the A/B unit), or None; an empty or oversized id is an error."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError("user_id must be a non-empty string (or left out)")
    if len(value) > MAX_USER_ID_CHARS:
        raise InvalidInputError(f"user_id is longer than {MAX_USER_ID_CHARS} characters")
    return value


def check_text(text: Any, where: str = "text") -> str:
    """One text, or an error naming what is wrong with it."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError(f"{where} is empty or whitespace: send some text")
    return text


class Predictor:
    """Every variant of one worker: models, runners, router, readiness."""

    def __init__(self, settings: ServingConfig) -> None:
        self.settings = settings
        self.models = {v.name: VariantModel(v, settings) for v in settings.variants}
        self.executor = ThreadPoolExecutor(settings.threads, thread_name_prefix="tuneserve-infer")
        self.batching = settings.batching_mode()
        self.runners: dict[str, Runner] = {
            name: make_runner(
                self.batching,
                model,
                self.executor,
                settings.batching.max_batch_size,
                settings.batching.max_latency_ms,
            )
            for name, model in self.models.items()
        }
        self.state = initial_state(settings)
        self.state_version = 0
        self.router = Router(
            self.state.effective_weights(), control=settings.control.name, salt=self.state.salt
        )
        experiment = settings.experiment
        self.ids = PredictionIds(load_key(experiment.id_key_env, experiment.id_key_file))
        store_at = settings.store.location()  # a SQLite file or a PostgreSQL URL
        self.log = PredictionLog(
            lambda: Store(store_at, settings.store.busy_timeout_ms, durable=False),
            max_queue=settings.store.log_queue_size,
        )
        self.store = Store(store_at, settings.store.busy_timeout_ms)
        self.labels = sorted({label for m in self.models.values() for label in m.labels})
        self.idle = threading.Event()  # set while no prediction is in flight in this worker
        self.idle.set()
        self._inflight = 0
        self._rng = random.Random()
        challengers = [n for n in settings.variant_names() if n != settings.control.name]
        self.guardrails = Guardrails(settings.guardrails, challengers)
        self.accuracy = AccuracyMonitor(
            settings.control.name, settings.guardrails.accuracy_alpha, experiment.msprt_tau
        )
        self.traffic = TrafficMonitor()
        self.shadow = ShadowScorer(
            self.log, self.idle, settings.shadow.max_pending, settings.shadow.max_age_ms
        )
        self._load_state(seed=True)
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_state, name="tuneserve-state", daemon=True
        )
        self._poller.start()
        self.ready = False
        self.warmup_error: BaseException | None = None
        for variant in settings.variants:
            model = self.models[variant.name]
            metrics.WEIGHT.labels(variant=variant.name).set(self.router.shares[variant.name])
            metrics.MODEL_INFO.labels(
                variant=variant.name,
                version=model.version,
                quantization=model.quantization,
                provider=model.provider,
            ).set(1)
        metrics.READY.set(0)
        logger.info(
            "loaded variants %s (batching %s, %d inference thread(s), %d ONNX Runtime thread(s))",
            ", ".join(f"{n}={m.version}" for n, m in self.models.items()),
            self.batching,
            settings.threads,
            settings.ort_threads(),
        )

    def _load_state(self, seed: bool = False) -> None:
        """Adopt the stored experiment state (seeding it from the config on first start)."""
        version, stored = self.store.get_state()
        state = ExperimentState.from_json(stored) if stored else None
        if state is None or not fits(state, self.settings):
            if not seed:
                return
            if state is not None:
                logger.warning("the serving config changed since the stored experiment state: "
                               "starting from the config")  # fmt: skip
            fresh = initial_state(self.settings)
            seeded = self.store.put_state(fresh.to_json(), {"by": "config"}, version)
            if seeded is None:  # another worker seeded it first: adopt that one
                self._load_state(seed=True)
                return
            state, version = fresh, seeded
        self._apply_state(state, version)

    def _apply_state(self, state: ExperimentState, version: int) -> None:
        self.router = Router(
            state.effective_weights(),
            control=self.settings.control.name,
            salt=state.salt,
            coverage=state.coverage,
        )
        for name in set(self.state.disabled) - set(state.disabled):
            self.guardrails.reset(name)  # back in rotation: judged afresh
        self.state, self.state_version = state, version
        for name, share in self.router.shares.items():
            metrics.WEIGHT.labels(variant=name).set(share)
            metrics.VARIANT_ENABLED.labels(variant=name).set(0 if name in state.disabled else 1)
        logger.info("using experiment state version %d: shares %s", version, self.router.shares)

    def _poll_state(self) -> None:
        """Adopt state changes; check the guardrails and the sample ratio now and then."""
        interval_s = self.settings.guardrails.check_interval_s
        next_window = next_store = time.monotonic() + interval_s
        while not self._stop_polling.wait(min(STATE_POLL_S, interval_s)):
            try:
                if self.store.state_version() != self.state_version:
                    self._load_state()
                now = time.monotonic()
                if now >= next_window:
                    next_window = now + interval_s
                    self._check_window()
                if now >= next_store:
                    next_store = now + interval_s * STORE_CHECKS_EVERY
                    self._check_store()
            except Exception as exc:  # a busy or failing store must not stop the poller
                logger.warning("experiment state poll failed: %s", type(exc).__name__)

    def _check_window(self) -> None:
        if self.settings.guardrails.enabled:
            for trip in self.guardrails.check(skip=self.state.disabled):
                self._trip(trip)

    def _check_store(self) -> None:
        """The checks that read the store: accuracy guardrail, sample-ratio gauges."""
        settings = self.settings
        guard = settings.guardrails
        history = self.store.history()
        if guard.enabled and guard.accuracy:
            since = {  # put back by the admin: judged afresh, on what it answered since
                name: enabled_since(history, name)
                for name in self.guardrails.windows
                if name not in self.state.disabled
            }
            for trip in self.accuracy.check(self.store, self.state.salt, since):
                self._trip(trip)
        since_change = history[-1][0] if history else 0.0  # the split is judged since then
        srm = sample_ratio_check(
            self.traffic.counts(self.store, self.state.salt, since_change), self.router.shares
        )
        metrics.SAMPLE_RATIO_P_VALUE.set(srm.p_value)
        metrics.SAMPLE_RATIO_MISMATCH.set(int(srm.mismatch))

    def _trip(self, trip: Trip) -> None:
        """Take a challenger out of rotation: stored (so every worker follows), logged, counted."""
        for _ in range(3):  # compare-and-set against concurrent admin changes or other workers
            version, stored = self.store.get_state()
            state = ExperimentState.from_json(stored) if stored else self.state
            if trip.variant in state.disabled:
                return
            reason = {"kind": trip.kind, "detail": trip.detail}
            new_state, change = disable_variant(state, trip.variant, reason)
            new_version = self.store.put_state(new_state.to_json(), change, version)
            if new_version is not None:
                metrics.GUARDRAIL_TRIPS.labels(variant=trip.variant, kind=trip.kind).inc()
                logger.warning("guardrail: %s taken out of rotation (%s: %s)", trip.variant,
                               trip.kind, trip.detail)  # fmt: skip
                self._apply_state(new_state, new_version)
                return

    def change_state(self, body: Any) -> dict[str, Any]:
        """Apply an admin change: validated, stored (with history), adopted here at once."""
        state, change = apply_change(self.state, body, self.settings)
        version = self.store.put_state(state.to_json(), change) or 0
        self._apply_state(state, version)
        logger.info("experiment state changed to version %d", version)
        return self.config_summary()

    def config_summary(self) -> dict[str, Any]:
        """GET /ab/config."""
        return self.state.to_json() | {
            "version": self.state_version,
            "control": self.settings.control.name,
            "shares": self.router.shares,
        }

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
    ) -> tuple[Assignment, VariantModel, list[dict[str, Any]]]:
        """Answers for ``texts`` (already checked) from one variant, under the deadline.

        ``user_id`` makes the assignment sticky; ``forced`` names the variant outright."""
        if not self.ready:
            raise OverloadedError(
                "the service is warming up its models; retry shortly",
                headers={"Retry-After": str(self.settings.limits.retry_after_s)},
            )
        started = time.perf_counter()
        router = self.router  # one state for the whole request, even if a change lands meanwhile
        assignment = router.choose(user_id=user_id, forced=forced)
        model = self.models[assignment.variant]
        hashed = unit_hash(self.settings.experiment.salt, user_id) if user_id else None
        self._inflight += 1
        self.idle.clear()
        try:
            probs, encodings = await self._run(model, texts)
        except Exception as exc:  # not a cancellation: a client that went away is no failure
            kind = "deadline" if isinstance(exc, DeadlineError) else "internal"
            self._log_failure(assignment, model, texts, hashed, started, kind, router.salt)
            raise
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self.idle.set()
        answers = []
        now, latency_ms = time.time(), (time.perf_counter() - started) * 1000
        self.guardrails.record(assignment.variant, latency_ms, failed=False)
        for text, row, encoding in zip(texts, probs, encodings, strict=True):
            prediction = model.answer(row, encoding)
            self._count(assignment, prediction.label, prediction.score, prediction.truncated)
            prediction_id = self.ids.new()
            self.log.submit(
                self._row(assignment, model, prediction_id, now, hashed, latency_ms, router.salt)
                | {
                    "label": prediction.label,
                    "score": prediction.score,
                    "text": text if self.settings.store.log_text else None,
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
        return assignment, model, answers

    async def _run(self, model: VariantModel, texts: list[str]) -> tuple[Any, list[Any]]:
        """Tokenise and run ``texts`` on ``model`` within the deadline."""
        deadline_ms = self.settings.limits.deadline_ms
        try:
            async with asyncio.timeout(deadline_ms / 1000.0):
                if sum(len(t) for t in texts) > _LOOP_TOKENIZE_CHARS:
                    loop = asyncio.get_running_loop()
                    encodings = await loop.run_in_executor(None, model.encode, texts)
                else:
                    encodings = model.encode(texts)
                return await self.runners[model.name].run(encodings), encodings
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
        """A routed request failed: one error row per text (the report's error rate), and the
        variant's guardrail window."""
        latency_ms = (time.perf_counter() - started) * 1000
        self.guardrails.record(assignment.variant, latency_ms, failed=True)
        now = time.time()
        for _ in texts:
            row = self._row(assignment, model, self.ids.new(), now, hashed, latency_ms, salt)
            self.log.submit(row | {"label": "", "score": 0.0, "error": kind})

    def _offer_shadow(
        self, assignment: Assignment, texts: list[str], answers: list[dict[str, Any]]
    ) -> None:
        """Hand a sampled share of requests to the shadow variant (scored after answering)."""
        state = self.state
        shadow = state.shadow_variant
        if not shadow or shadow == assignment.variant or state.shadow_share <= 0:
            return
        if self._rng.random() >= state.shadow_share:
            return
        self.shadow.offer(
            ShadowJob(
                model=self.models[shadow],
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
        result = await loop.run_in_executor(None, store.add_feedback, prediction_id, label)
        variant = await loop.run_in_executor(None, store.variant_of, prediction_id)
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
        return {
            "ready": self.ready,
            "batching": self.batching,
            "device": self.settings.device,
            "control": self.settings.control.name,
            "variants": [
                self.models[v.name].summary() | {"weight": self.router.shares[v.name]}
                for v in self.settings.variants
            ],
        }

    async def close(self) -> None:
        """Stop the batchers and the inference threads; flush the prediction log."""
        for runner in self.runners.values():
            await runner.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._stop_polling.set()
        self._poller.join(2)
        self.shadow.close()
        self.log.close()
        self.store.close()
