"""The live experiment of one worker: the router in force, the stored state it follows, the
guardrail and sample-ratio checks it runs, and the trips and admin changes it applies.

A background thread polls the stored state's version every STATE_POLL_S and adopts a newer
state; every ``guardrails.check_interval_s`` it checks this worker's guardrail windows, and every
STORE_CHECKS_EVERY intervals the checks that read the store (the accuracy guardrail, the
sample-ratio gauges). A trip or an admin change is written to the store (compare-and-set on the
version), so every worker follows it and it survives a restart.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from service import metrics
from service.config import ServingConfig
from service.experiment.changes import apply_change, disable_variant
from service.experiment.state import ExperimentState, StateRow, fits, initial_state
from service.guardrails import Guardrails, Trip, enabled_since
from service.monitors import AccuracyMonitor, TrafficMonitor
from service.pool import StoreUnavailableError
from service.routing import Router
from service.stats import sample_ratio_check
from service.store import Store

logger = logging.getLogger(__name__)

STATE_POLL_S = 0.5  # how often a worker checks the store for a changed experiment state
STORE_CHECKS_EVERY = 5  # guardrail intervals between checks that read the store (accuracy, SRM)


class Experiment:
    """One worker's view of the experiment: state, version, router, guardrails, monitors."""

    def __init__(self, settings: ServingConfig, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.row = StateRow(store)
        self.state = initial_state(settings)
        self.version = 0
        self.router = Router(
            self.state.effective_weights(), control=settings.control.name, salt=self.state.salt
        )
        challengers = [n for n in settings.variant_names() if n != settings.control.name]
        self.guardrails = Guardrails(settings.guardrails, challengers)
        self.accuracy = AccuracyMonitor(
            settings.control.name,
            settings.guardrails.accuracy_alpha,
            settings.experiment.msprt_tau,
        )
        self.traffic = TrafficMonitor()
        self._rng = random.Random()
        self._load(seed=True)
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="tuneserve-state", daemon=True)
        self._poller.start()

    def record(self, variant: str, latency_ms: float, failed: bool) -> None:
        """Note one routed request in the variant's guardrail window."""
        self.guardrails.record(variant, latency_ms, failed)

    def shadow_for(self, live_variant: str) -> str | None:
        """The shadow variant that should also score this request (sampled at its share)."""
        state = self.state
        shadow = state.shadow_variant
        if not shadow or shadow == live_variant or state.shadow_share <= 0:
            return None
        if self._rng.random() >= state.shadow_share:
            return None
        return shadow

    def change(self, body: Any) -> dict[str, Any]:
        """Apply an admin change: validated, stored (with history), adopted here at once."""
        state, change = apply_change(self.state, body, self.settings)
        version = self.row.write(state, change) or 0
        self._apply(state, version)
        logger.info("experiment state changed to version %d", version)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """GET /ab/config."""
        return self.state.to_json() | {
            "version": self.version,
            "control": self.settings.control.name,
            "shares": self.router.shares,
        }

    def close(self) -> None:
        """Stop polling the store."""
        self._stop_polling.set()
        self._poller.join(2)

    def _load(self, seed: bool = False) -> None:
        """Adopt the stored experiment state (seeding it from the config on first start)."""
        version, state = self.row.read()
        if state is None or not fits(state, self.settings):
            if not seed:
                return
            if state is not None:
                logger.warning("the serving config changed since the stored experiment state: "
                               "starting from the config")  # fmt: skip
            fresh = initial_state(self.settings)
            seeded = self.row.write(fresh, {"by": "config"}, version)
            if seeded is None:  # another worker seeded it first: adopt that one
                self._load(seed=True)
                return
            state, version = fresh, seeded
        self._apply(state, version)

    def _apply(self, state: ExperimentState, version: int) -> None:
        self.router = Router(
            state.effective_weights(),
            control=self.settings.control.name,
            salt=state.salt,
            coverage=state.coverage,
        )
        for name in set(self.state.disabled) - set(state.disabled):
            self.guardrails.reset(name)  # back in rotation: judged afresh
        self.state, self.version = state, version
        for name, share in self.router.shares.items():
            metrics.WEIGHT.labels(variant=name).set(share)
            metrics.VARIANT_ENABLED.labels(variant=name).set(0 if name in state.disabled else 1)
        logger.info("using experiment state version %d: shares %s", version, self.router.shares)

    def _poll(self) -> None:
        """Adopt state changes; check the guardrails and the sample ratio now and then."""
        interval_s = self.settings.guardrails.check_interval_s
        next_window = next_store = time.monotonic() + interval_s
        while not self._stop_polling.wait(min(STATE_POLL_S, interval_s)):
            try:
                if self.row.version() != self.version:
                    self._load()
                now = time.monotonic()
                if now >= next_window:
                    next_window = now + interval_s
                    self._check_window()
                if now >= next_store:
                    next_store = now + interval_s * STORE_CHECKS_EVERY
                    self._check_store()
            except StoreUnavailableError:
                pass  # said once by the store's health (service/pool.py); retried next time
            except Exception as exc:  # a busy or failing store must not stop the poller
                logger.warning("experiment state poll failed: %s", type(exc).__name__)

    def _check_window(self) -> None:
        if self.settings.guardrails.enabled:
            for trip in self.guardrails.check(skip=self.state.disabled):
                self._trip(trip)

    def _check_store(self) -> None:
        """The checks that read the store: accuracy guardrail, sample-ratio gauges."""
        guard = self.settings.guardrails
        history = self.store.history()
        if guard.enabled and guard.accuracy:
            since = {  # put back by the admin: judged afresh, on what it answered since
                name: enabled_since(history, name)
                for name in self.guardrails.windows
                if name not in self.state.disabled
            }
            for trip in self.accuracy.check(self.store, self.state.salt, since):
                self._trip(trip)
        since_change = history[-1].ts if history else 0.0  # the split is judged since then
        srm = sample_ratio_check(
            self.traffic.counts(self.store, self.state.salt, since_change), self.router.shares
        )
        metrics.SAMPLE_RATIO_P_VALUE.set(srm.p_value)
        metrics.SAMPLE_RATIO_MISMATCH.set(int(srm.mismatch))

    def _trip(self, trip: Trip) -> None:
        """Take a challenger out of rotation: stored (so every worker follows), logged, counted."""
        for _ in range(3):  # compare-and-set against concurrent admin changes or other workers
            version, stored = self.row.read()
            state = stored or self.state
            if trip.variant in state.disabled:
                return
            reason = {"kind": trip.kind, "detail": trip.detail}
            new_state, change = disable_variant(state, trip.variant, reason)
            new_version = self.row.write(new_state, change, version)
            if new_version is not None:
                metrics.GUARDRAIL_TRIPS.labels(variant=trip.variant, kind=trip.kind).inc()
                logger.warning("guardrail: %s taken out of rotation (%s: %s)", trip.variant,
                               trip.kind, trip.detail)  # fmt: skip
                self._apply(new_state, new_version)
                return
