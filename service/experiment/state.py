"""The experiment state (weights, salt, coverage, shadow, disabled variants) and its stored row.

The state lives in the store, so a change made through any worker reaches every worker (each
polls the row's version; service/experiment/live.py) and survives restarts. ``StateRow`` is the
only code that reads or writes it: a shared row with a leader would replace it alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from service.config import ServingConfig
from service.store import Store


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
        )


def initial_state(settings: ServingConfig) -> ExperimentState:
    """The state the serving config describes."""
    weights = {v.name: v.weight for v in settings.variants}
    salt, coverage = settings.experiment.salt, settings.experiment.coverage
    shadow = settings.shadow
    fingerprint = [weights, salt, coverage, shadow.variant, shadow.share]
    origin = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return ExperimentState(weights, salt, (), origin, coverage, shadow.variant, shadow.share)


def fits(state: ExperimentState, settings: ServingConfig) -> bool:
    """Whether a stored state grew from this serving config (else the config wins on start).

    So admin changes survive a restart with the same config; editing the config's weights,
    salt, coverage or shadow starts from the config again."""
    return state.origin == initial_state(settings).origin


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
    ) -> int | None:
        """Store ``state`` and record ``change``; with ``expected_version``, only if the stored
        state is still that version. The new version, or None when another write came first."""
        return self.store.put_state(state.to_json(), change, expected_version)


def read_state(store: Store, settings: ServingConfig) -> ExperimentState:
    """The state in force: the stored one, or the config's before anything was stored."""
    return StateRow(store).read().state or initial_state(settings)
