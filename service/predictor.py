"""The prediction path without HTTP: validate, route, run under a deadline, answer, count.

``Predictor`` holds every variant's model and runner for one worker. The BentoML service (app.py)
only parses HTTP and calls it, so the same path runs in tests without a server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service import metrics
from service.admin import ExperimentState, apply_change, fits, initial_state
from service.batching import Runner, make_runner
from service.config import ServingConfig
from service.errors import (
    DeadlineError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
)
from service.ids import PredictionIds, load_key
from service.model import VariantModel
from service.predlog import PredictionLog
from service.routing import Assignment, Router
from service.store import Store, unit_hash

logger = logging.getLogger(__name__)

STATE_POLL_S = 0.5  # how often a worker checks the store for a changed experiment state

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
        self.log = PredictionLog(
            lambda: Store(settings.store.path, settings.store.busy_timeout_ms, durable=False),
            max_queue=settings.store.log_queue_size,
        )
        self.store = Store(settings.store.path, settings.store.busy_timeout_ms)
        self.labels = sorted({label for m in self.models.values() for label in m.labels})
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
            version = self.store.put_state(fresh.to_json(), {"by": "config"})
            state = fresh
        self._apply_state(state, version)

    def _apply_state(self, state: ExperimentState, version: int) -> None:
        self.router = Router(
            state.effective_weights(), control=self.settings.control.name, salt=state.salt
        )
        self.state, self.state_version = state, version
        for name, share in self.router.shares.items():
            metrics.WEIGHT.labels(variant=name).set(share)
        logger.info("using experiment state version %d: shares %s", version, self.router.shares)

    def _poll_state(self) -> None:
        while not self._stop_polling.wait(STATE_POLL_S):
            try:
                if self.store.state_version() != self.state_version:
                    self._load_state()
            except Exception as exc:  # a busy or failing store must not stop the poller
                logger.warning("experiment state poll failed: %s", type(exc).__name__)

    def change_state(self, body: Any) -> dict[str, Any]:
        """Apply an admin change: validated, stored (with history), adopted here at once."""
        state, change = apply_change(self.state, body, self.settings)
        version = self.store.put_state(state.to_json(), change)
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
        assignment = self.router.choose(user_id=user_id, forced=forced)
        model = self.models[assignment.variant]
        deadline_s = self.settings.limits.deadline_ms / 1000.0
        try:
            async with asyncio.timeout(deadline_s):
                if sum(len(t) for t in texts) > _LOOP_TOKENIZE_CHARS:
                    loop = asyncio.get_running_loop()
                    encodings = await loop.run_in_executor(None, model.encode, texts)
                else:
                    encodings = model.encode(texts)
                probs = await self.runners[assignment.variant].run(encodings)
        except TimeoutError:
            raise DeadlineError(
                f"the prediction did not finish within {self.settings.limits.deadline_ms:g} ms"
            ) from None
        answers = []
        now, latency_ms = time.time(), (time.perf_counter() - started) * 1000
        hashed = unit_hash(self.settings.experiment.salt, user_id) if user_id else None
        for text, row, encoding in zip(texts, probs, encodings, strict=True):
            prediction = model.answer(row, encoding)
            self._count(assignment, prediction.label, prediction.score, prediction.truncated)
            prediction_id = self.ids.new()
            self.log.submit(
                {
                    "id": prediction_id,
                    "ts": now,
                    "variant": assignment.variant,
                    "model_version": model.version,
                    "unit": assignment.unit,
                    "unit_hash": hashed,
                    "forced": int(assignment.forced),
                    "label": prediction.label,
                    "score": prediction.score,
                    "latency_ms": latency_ms,
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
        return assignment, model, answers

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
        self.log.close()
        self.store.close()
