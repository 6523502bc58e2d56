"""The experiment state (weights, salt, coverage, shadow, disabled variants, the control and the
rollout plan) and its stored row.

The state lives in the store as one row with a version that every write raises by one, so a
change made through any worker of any replica reaches them all (each polls the version;
service/experiment/live.py) and survives restarts. ``StateRow`` is the only code that reads or
writes it. Which state a starting replica uses is ``starting_state``'s rule: the stored one,
unless the replica's config carries a higher ``experiment.revision`` than the stored state grew
from; so during a rolling update old pods never write their older state back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from service.config import ServingConfig
from service.dialect import Connection
from service.experiment.plan import Rollout, plan_of, ramp_weights
from service.store import StateUpdate, Store

Changed = tuple["ExperimentState", dict[str, Any]]  # a new state and the change that made it


@dataclass(frozen=True)
class ExperimentState:
    """What the admin API can change without a restart."""

    weights: dict[str, float]
    salt: str
    disabled: tuple[str, ...] = field(default=())
    origin: str = ""  # fingerprint of the config state it grew from
    coverage: float = 1.0
    shadow_variant: str = ""
    shadow_share: float = 0.0
    revision: int = 0  # experiment.revision of the config it grew from
    control: str = ""  # the control once a rollout promoted a challenger ("": the config's)
    rollout: Rollout | None = None  # the progressive rollout plan, if any

    def control_of(self, settings: ServingConfig) -> str:
        """The control in force: a promoted challenger, else the config's control (also when
        the state names a variant this replica does not serve)."""
        served = settings.variant_names()
        return self.control if self.control in served else settings.control.name

    def effective_weights(self) -> dict[str, float]:
        """The weights routing uses: a disabled variant gets no traffic."""
        return {n: (0.0 if n in self.disabled else w) for n, w in self.weights.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "salt": self.salt,
            "coverage": self.coverage,
            "shadow": {"variant": self.shadow_variant, "share": self.shadow_share},
            "disabled": list(self.disabled),
            "origin": self.origin,
            "revision": self.revision,
            "control": self.control,
            "rollout": None if self.rollout is None else self.rollout.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExperimentState:
        shadow = data.get("shadow") or {}
        return cls(
            {str(k): float(v) for k, v in data["weights"].items()},
            str(data["salt"]),
            tuple(data.get("disabled", ())),
            str(data.get("origin", "")),
            float(data.get("coverage", 1.0)),
            str(shadow.get("variant", "")),
            float(shadow.get("share", 0.0)),
            int(data.get("revision", 0)),
            str(data.get("control") or ""),
            Rollout.from_json(data["rollout"]) if data.get("rollout") else None,
        )


def initial_state(settings: ServingConfig) -> ExperimentState:
    """The state the serving config describes."""
    weights = {v.name: v.weight for v in settings.variants}
    salt, coverage = settings.experiment.salt, settings.experiment.coverage
    shadow = settings.shadow
    fingerprint: list[Any] = [weights, salt, coverage, shadow.variant, shadow.share]
    plan = None
    if settings.rollout.challenger:  # the plan's first step sets the challenger's share
        plan = plan_of(settings.rollout, settings, settings.control.name)
        fingerprint.append(plan.to_json())
        weights = ramp_weights(weights, (), settings.control.name, plan.challenger, plan.share)
    origin = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    revision = settings.experiment.revision
    return ExperimentState(
        weights, salt, (), origin, coverage, shadow.variant, shadow.share, revision, "", plan
    )


def fits(state: ExperimentState, settings: ServingConfig) -> bool:
    """Whether a stored state grew from this serving config's experiment definition (same
    revision and the same weights, salt, coverage and shadow)."""
    fresh = initial_state(settings)
    return (state.revision, state.origin) == (fresh.revision, fresh.origin)


class Start(NamedTuple):
    """What a starting replica does with the stored state: ``write`` its config's state (nothing
    stored yet, or its revision is newer), or follow the stored one; ``warning`` says why a
    config that differs from the stored state is not used (empty when it is no news)."""

    write: bool
    warning: str


def starting_state(stored: ExperimentState | None, settings: ServingConfig) -> Start:
    """The start-up rule: the stored state wins unless this config's revision is newer.

    The same revision with another definition (the config was edited without bumping
    ``experiment.revision``) follows the stored state too, and says so: two configs of one
    revision cannot tell which is newer, and letting either win would make the pods of a
    rolling update overwrite each other's state back and forth."""
    if stored is None:
        return Start(True, "")
    fresh = initial_state(settings)
    if fresh.revision > stored.revision:
        return Start(True, "")
    if fresh.revision < stored.revision:
        return Start(False, (
            f"this replica's serving config has experiment.revision {fresh.revision}, older than "
            f"the stored experiment state's {stored.revision}: following the stored state (roll "
            "this replica forward to the newer config)"
        ))  # fmt: skip
    if fresh.origin != stored.origin:
        return Start(False, (
            "the serving config's experiment (weights, salt, coverage or shadow) differs from the "
            f"stored state of the same experiment.revision {fresh.revision}: following the stored "
            f"state; set experiment.revision = {fresh.revision + 1} to start from the config"
        ))  # fmt: skip
    return Start(False, "")


class VersionedState(NamedTuple):
    """The stored experiment state and its version (0 and None: nothing stored yet)."""

    version: int
    state: ExperimentState | None


class StateRow:
    """The experiment state as the store keeps it: one row with a version that every write
    raises by one, and every change in the history beside it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def version(self) -> int:
        """The stored version (0: none stored yet); cheap, read at every poll."""
        return self.store.state_version()

    def read(self) -> VersionedState:
        """The stored state and its version."""
        stored = self.store.get_state()
        state = ExperimentState.from_json(stored.state) if stored.state else None
        return VersionedState(stored.version, state)

    def write(
        self,
        state: ExperimentState,
        change: dict[str, Any],
        expected_version: int | None = None,
        leader: str | None = None,
    ) -> int | None:
        """Store ``state`` and record ``change``; with ``expected_version``, only if the stored
        state is still that version, and with ``leader``, only while that holder's lease is in
        force. The new version, or None when another write came first (or the lease ran out)."""
        return self.store.put_state(state.to_json(), change, expected_version, leader)

    def update(
        self,
        update: Callable[[int, ExperimentState | None], Changed | None],
        leader: str | None = None,
        also: Callable[[Connection, int, dict[str, Any]], None] | None = None,
    ) -> VersionedState | None:
        """Read, change and write the state with no other write between (the store's write
        lock): ``update(version, state)`` gives the new state and its change, or None to leave
        it; an exception it raises rolls back. The new version and state, or None when nothing
        was written (``update`` said so, or ``leader``'s lease is not in force); ``also``
        writes more in the same transaction (``Store.update_state``)."""

        def on_json(version: int, data: dict[str, Any] | None) -> StateUpdate | None:
            wanted = update(version, ExperimentState.from_json(data) if data else None)
            return None if wanted is None else (wanted[0].to_json(), wanted[1])

        written = self.store.update_state(on_json, leader, also)
        if written is None or written.state is None:
            return None
        return VersionedState(written.version, ExperimentState.from_json(written.state))


def read_state(store: Store, settings: ServingConfig) -> ExperimentState:
    """The state in force: the stored one, or the config's before anything was stored."""
    return StateRow(store).read().state or initial_state(settings)
