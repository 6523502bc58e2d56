"""The live experiment of one worker: the router in force, the stored state it follows, and, on
the deployment's one leader, the guardrail and sample-ratio decisions.

A background thread polls the stored state's version every STATE_POLL_S and adopts a newer
state, so every worker of every replica routes by the newest version within STATE_POLL_S (plus
one store read); while the store cannot be read it keeps routing by the last state it adopted.
Every ``guardrails.check_interval_s`` it renews or seeks the leader's lease
(service/experiment/leader.py); the leader then checks the store-wide guardrail windows, and every
STORE_CHECKS_EVERY ticks the checks that read the labelled predictions (the accuracy guardrail,
the sample-ratio gauges, the rollout plan's transitions: service/experiment/rollout.py). A trip,
a rollout transition or an admin change is written to the store by compare-and-set
on the version, so nothing is lost between workers, every worker follows it, and it survives a
restart.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from service import metrics
from service.config import ServingConfig
from service.errors import ConflictError
from service.experiment.changes import (
    apply_change,
    check_version,
    disable_variant,
    split_version,
    unless_moved,
)
from service.experiment.events import record_event
from service.experiment.judge import RolloutJudge
from service.experiment.leader import Leadership
from service.experiment.rollout import admin_rollout, announce, start_from_config, transition
from service.experiment.state import (
    Changed,
    ExperimentState,
    StateRow,
    initial_state,
    starting_state,
)
from service.guardrails import Trip, enabled_since, window_trips
from service.monitors import AccuracyMonitor, TrafficMonitor
from service.routing import Router, check_weights
from service.stats import sample_ratio_check
from service.store import Store

logger = logging.getLogger(__name__)

STATE_POLL_S = 0.5  # how often a worker checks the store for a changed experiment state
STORE_CHECKS_EVERY = 5  # leader ticks between checks that read the labelled predictions
CHANGE_ATTEMPTS = 5  # a starting replica's seed is retried this often when others write first


class Experiment:
    """One worker's view of the experiment: state, version, router, leadership, monitors."""

    def __init__(self, settings: ServingConfig, store: Store, holder: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.row = StateRow(store)
        self.state = initial_state(settings)
        self.version = 0
        self.control = self.state.control_of(settings)
        self.router = Router(self.state.effective_weights(), self.control, self.state.salt)
        self.clock = time.time  # when rollout steps begin and end (tests move it on)
        self.leadership = Leadership(store, settings.guardrails.leader_lease_s, holder)
        self._new_monitors()
        self._history: tuple[int, list[Any]] = (-1, [])
        self._rng = random.Random()
        self.watchers: list[Callable[[], None]] = []  # also called at every poll (swap.py)
        self._start()
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="tuneserve-state", daemon=True)
        self._poller.start()

    def shadow_for(self, live_variant: str) -> str | None:
        """The shadow variant that should also score this request (sampled at its share)."""
        state = self.state
        shadow = state.shadow_variant
        if not shadow or shadow == live_variant or state.shadow_share <= 0:
            return None
        if shadow not in self.router.shares or self._rng.random() >= state.shadow_share:
            return None
        return shadow

    def change(self, body: Any) -> dict[str, Any]:
        """Apply an admin change to the newest stored state and store it (with history), with
        no other write between (the store's write lock).

        With ``"version"`` in the body, only if that is still the stored version (409 names the
        current one); without it the change is applied to whatever state is newest, so
        concurrent changes on two replicas both take effect, one after the other."""
        body, based_on = split_version(body)
        self._admin(based_on, lambda state: apply_change(state, body, self.settings))
        return self.summary()

    def rollout_change(self, body: Any) -> dict[str, Any]:
        """Apply a PUT /ab/rollout body (start a plan, pause, resume, abort) as ``change``
        applies a PUT /ab/config one: the same version rule, history and 409."""
        body, based_on = split_version(body)
        change = self._admin(
            based_on, lambda state: admin_rollout(state, body, self.settings, self.clock())
        )
        announce(change)
        return self.summary()

    def _admin(self, based_on: int | None, apply: Any) -> dict[str, Any]:
        """Store ``apply(newest state)`` (with its history entry and rollout event), only on
        version ``based_on`` when given (409 otherwise); the change made."""
        made: list[dict[str, Any]] = []

        def update(version: int, stored: ExperimentState | None) -> Changed:
            check_version(version, based_on)
            new, change = apply(stored or self.state)
            made.append(change)
            return new, change

        written = self.row.update(update, also=record_event)
        if written is None or written.state is None:  # update never declines: not reached
            raise ConflictError("the experiment state could not be changed: send it again")
        self._apply(written.state, written.version)
        logger.info("experiment state changed to version %d", written.version)
        return made[-1]

    def serve(self, settings: ServingConfig) -> None:
        """Route among ``settings``' variants from now on (a hot swap added or removed one),
        by the newest stored state."""
        self.settings = settings
        try:
            version, state = self.row.read()
        except Exception:  # the store is away: the poller adopts the newest state later
            version, state = self.version, None
        self._apply(state or self.state, version if state is not None else self.version)

    def summary(self) -> dict[str, Any]:
        """GET /ab/config."""
        return self.state.to_json() | {
            "version": self.version,
            "control": self.control,
            "shares": self.router.shares,
        }

    def close(self) -> None:
        """Stop polling the store; give up the leader's lease, so another worker takes over."""
        self._stop_polling.set()
        self._poller.join(2)
        try:
            self.leadership.release()
        except Exception as exc:  # the store is away: the lease runs out by itself
            logger.warning("could not release the experiment leader lease: %s", type(exc).__name__)

    def _start(self) -> None:
        """Adopt the stored state, or write this config's (nothing stored, or a newer revision)."""
        for _ in range(CHANGE_ATTEMPTS):
            version, stored = self.row.read()
            start = starting_state(stored, self.settings)
            if start.warning:
                logger.warning("%s", start.warning)
            if stored is not None and not start.write:
                self._apply(stored, version)
                return
            fresh = initial_state(self.settings)
            change: dict[str, Any] = {"by": "config", "revision": fresh.revision}
            started = start_from_config(fresh, self.clock())  # the config's rollout plan
            if started is not None:
                fresh, change = started[0], started[1] | change
            written = self.row.update(unless_moved(version, (fresh, change)), also=record_event)
            if written is not None:
                if started is not None:
                    announce(change)
                self._apply(fresh, written.version)
                return
        self._follow()  # others kept writing: follow whatever is newest

    def _follow(self) -> None:
        """Adopt the stored state if it is not the one in force."""
        version, state = self.row.read()
        if state is not None and version != self.version:
            self._apply(state, version)

    def _apply(self, state: ExperimentState, version: int) -> None:
        control = state.control_of(self.settings)
        self.router = Router(
            self._routable(state, control), control=control, salt=state.salt,
            coverage=state.coverage,
        )  # fmt: skip
        if control != self.control:  # a promotion: the guardrails judge against the new one
            self.control = control
            self._new_monitors()
        self.state, self.version = state, version
        metrics.ROLLOUT_STEP.set(0.0 if state.rollout is None else state.rollout.share)
        for name, share in self.router.shares.items():
            metrics.WEIGHT.labels(variant=name).set(share)
            metrics.VARIANT_ENABLED.labels(variant=name).set(0 if name in state.disabled else 1)
        metrics.EXPERIMENT_STATE_VERSION.set(version)
        logger.info("using experiment state version %d: shares %s", version, self.router.shares)

    def _routable(self, state: ExperimentState, control: str) -> dict[str, float]:
        """The state's weights of the variants served here (a state grown from another config,
        during a rolling update, may name others: they get no traffic from this replica)."""
        weights = state.effective_weights()
        served = {name: weights.get(name, 0.0) for name in self.settings.variant_names()}
        if set(weights) - set(served):  # one served but not in the state just gets 0
            logger.warning(
                "experiment state names variants %s, this replica serves %s: routing among "
                "those served", sorted(weights), sorted(served),
            )  # fmt: skip
        try:
            check_weights(served, control)
        except ValueError:
            return {name: float(name == control) for name in served}
        return served

    def _poll(self) -> None:
        """Adopt state changes; tick the leadership, and decide as the leader."""
        interval_s = self.settings.guardrails.check_interval_s
        next_tick = time.monotonic()
        ticks, failing = 0, False
        while not self._stop_polling.wait(min(STATE_POLL_S, interval_s)):
            try:
                if self.row.version() != self.version:
                    self._follow()
                for watch in self.watchers:
                    watch()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + interval_s
                    ticks = self._tick(ticks)
                if failing:
                    failing = False
                    logger.info("experiment state poll works again: version %d", self.version)
            except Exception as exc:  # a busy or failing store must not stop the poller
                if not failing:  # once per outage, not twice a second
                    failing = True
                    logger.warning("experiment state poll failed: %s; routing by version %d "
                                   "until the store answers", type(exc).__name__,
                                   self.version)  # fmt: skip

    def _tick(self, ticks: int) -> int:
        """Renew or seek the lease; as the leader, decide. The leader's ticks so far."""
        was_leader = self.leadership.is_leader
        if not self.leadership.tick():
            return 0
        if not was_leader:  # new to the job: judge afresh from the whole store
            self._new_monitors()
            ticks = 0
        self._check_windows()
        if ticks % STORE_CHECKS_EVERY == 0:
            self._check_store()
            self._check_rollout()
        return ticks + 1

    def check_now(self) -> bool:
        """Seek or renew the lease and, as the leader, run every check now, as the poller does
        at a leader's first tick; whether this worker leads."""
        return self._tick(0) > 0

    def _new_monitors(self) -> None:
        self.accuracy = AccuracyMonitor(
            self.control,
            self.settings.guardrails.accuracy_alpha,
            self.settings.experiment.msprt_tau,
        )
        self.traffic = TrafficMonitor()
        self.judge = RolloutJudge(self.settings.experiment.msprt_tau)

    def _changes(self) -> list[Any]:
        """The history of state changes (read again only when the version moved on)."""
        if self._history[0] != self.version:
            self._history = (self.version, self.store.history())
        return self._history[1]

    def _since(self) -> dict[str, float]:
        """Each challenger in rotation -> when it was last put back (0: never taken out)."""
        history = self._changes()
        return {name: enabled_since(history, name) for name in self.settings.variant_names()
                if name != self.control and name not in self.state.disabled}  # fmt: skip

    def _check_windows(self) -> None:
        """The leader's error-rate and latency checks, on every replica's logged requests."""
        guard = self.settings.guardrails
        if guard.enabled:
            for trip in window_trips(
                self.store, guard, self._since(), self.state.salt, time.time()
            ):
                self._trip(trip)

    def _check_store(self) -> None:
        """The leader's checks that read labelled predictions: accuracy, sample-ratio gauges."""
        guard = self.settings.guardrails
        if guard.enabled and guard.accuracy:
            for trip in self.accuracy.check(self.store, self.state.salt, self._since()):
                self._trip(trip)
        history = self._changes()
        since_change = history[-1].ts if history else 0.0  # the split is judged since then
        srm = sample_ratio_check(
            self.traffic.counts(self.store, self.state.salt, since_change), self.router.shares
        )
        metrics.SAMPLE_RATIO_P_VALUE.set(srm.p_value)
        metrics.SAMPLE_RATIO_MISMATCH.set(int(srm.mismatch))

    def _check_rollout(self) -> None:
        """The leader's rollout decision (service/experiment/rollout.py) on store-wide figures,
        stored with its event while this worker leads."""
        plan = self.state.rollout
        if plan is None or not plan.active:
            return
        figures = self.judge.figures(self.store, self.state, self._changes())
        now = self.clock()

        made: list[Changed] = []

        def update(_: int, stored: ExperimentState | None) -> Changed | None:
            state = stored or self.state
            if state.rollout != plan:  # the admin acted meanwhile: decide again next time
                return None
            made[:] = [c for c in [transition(state, figures, now)] if c is not None]
            return made[0] if made else None

        written = self.row.update(update, leader=self.leadership.holder, also=record_event)
        if written is None or written.state is None:
            return
        announce(made[0][1])
        self._apply(written.state, written.version)

    def _trip(self, trip: Trip) -> None:
        """Take a challenger out of rotation: stored while this worker leads (so every worker
        follows, and a deposed leader cannot), logged, counted."""

        def update(_: int, stored: ExperimentState | None) -> Changed | None:
            state = stored or self.state
            if trip.variant in state.disabled:
                return None  # already out (the admin, or an earlier trip)
            return disable_variant(state, trip.variant, {"kind": trip.kind, "detail": trip.detail})

        written = self.row.update(update, leader=self.leadership.holder)
        if written is None or written.state is None:
            if trip.variant not in (self.row.read().state or self.state).disabled:
                self.leadership.lost()  # not written, not out: the lease ran out meanwhile
            return
        metrics.GUARDRAIL_TRIPS.labels(variant=trip.variant, kind=trip.kind).inc()
        logger.warning("guardrail: %s taken out of rotation (%s: %s)", trip.variant, trip.kind,
                       trip.detail)  # fmt: skip
        self._apply(written.state, written.version)
