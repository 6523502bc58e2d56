"""The live experiment state (weights, salt, coverage, shadow, disabled variants) and the admin
API's rules.

The state lives in the store, so a change made through any worker reaches every worker (each
polls the store's state version twice a second) and survives restarts. Changes need the bearer
token held in the environment variable the config names; without one, changes are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

from service.config import ServingConfig
from service.errors import ForbiddenError, InvalidInputError, UnauthorizedError
from service.routing import check_weights


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


def apply_change(
    state: ExperimentState, body: Any, settings: ServingConfig
) -> tuple[ExperimentState, dict[str, Any]]:
    """The new state for a PUT /ab/config body, and what changed; 400 naming any problem."""
    if not isinstance(body, dict) or not body:
        raise InvalidInputError(
            f"the body must be a JSON object with some of: {', '.join(CHANGE_KEYS)}"
        )
    unknown = set(body) - set(CHANGE_KEYS)
    if unknown:
        raise InvalidInputError(f"unknown keys {sorted(unknown)}: use {', '.join(CHANGE_KEYS)}")
    names = settings.variant_names()
    control = settings.control.name
    weights = dict(state.weights)
    if "weights" in body:
        new = body["weights"]
        if not isinstance(new, dict) or not new:
            raise InvalidInputError("weights must be an object of variant name -> number")
        for name, value in new.items():
            if name not in names:
                raise InvalidInputError(f"unknown variant {name!r}: served are {', '.join(names)}")
            if not _is_number(value) or value < 0:
                raise InvalidInputError(f"weight of {name!r} must be a non-negative number")
            weights[name] = float(value)
    salt = body.get("salt", state.salt)
    if not isinstance(salt, str) or not salt.strip():
        raise InvalidInputError("salt must be a non-empty string")
    disabled = set(state.disabled)
    for key, apply in (("disable", disabled.add), ("enable", disabled.discard)):
        listed = body.get(key, [])
        if not isinstance(listed, list) or any(n not in names for n in listed):
            raise InvalidInputError(f"{key} must be a list of served variants ({', '.join(names)})")
        for name in listed:
            if key == "disable" and name == control:
                raise InvalidInputError(f"the control {control!r} cannot be disabled")
            apply(name)
    coverage = body.get("coverage", state.coverage)
    if not _is_number(coverage) or not 0 <= coverage <= 1:
        raise InvalidInputError("coverage must be a number in [0, 1]")
    shadow_variant, shadow_share = _shadow_change(body.get("shadow"), state, names)
    new_state = replace(
        state, weights=weights, salt=salt, disabled=tuple(sorted(disabled)),
        coverage=float(coverage), shadow_variant=shadow_variant, shadow_share=shadow_share,
    )  # fmt: skip
    try:
        check_weights(new_state.effective_weights(), control)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    change = {"by": "admin", "from": state.to_json(), "to": new_state.to_json()}
    return new_state, change


CHANGE_KEYS = ("weights", "salt", "coverage", "shadow", "disable", "enable")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _shadow_change(shadow: Any, state: ExperimentState, names: list[str]) -> tuple[str, float]:
    """The shadow (variant, share) after a change: ``{"variant": name or "", "share": x}``."""
    if shadow is None:
        return state.shadow_variant, state.shadow_share
    if not isinstance(shadow, dict) or set(shadow) - {"variant", "share"}:
        raise InvalidInputError('shadow must be an object {"variant": name or "", "share": x}')
    variant = shadow.get("variant", state.shadow_variant)
    share = shadow.get("share", state.shadow_share)
    if not isinstance(variant, str) or (variant and variant not in names):
        raise InvalidInputError(f'shadow variant must be one of {", ".join(names)} (or "")')
    if not _is_number(share) or not 0 <= share <= 1:
        raise InvalidInputError("shadow share must be a number in [0, 1]")
    return variant, float(share)


def disable_variant(
    state: ExperimentState, name: str, reason: dict[str, Any]
) -> tuple[ExperimentState, dict[str, Any]]:
    """The state with ``name`` out of rotation, and the change to record (a guardrail trip)."""
    new_state = replace(state, disabled=tuple(sorted({*state.disabled, name})))
    return new_state, {"by": "guardrail", "variant": name, **reason, "from": state.to_json(),
                       "to": new_state.to_json()}  # fmt: skip


def check_token(authorization: str | None, env_name: str) -> None:
    """Raise unless ``authorization`` is ``Bearer <the token in $env_name>`` (constant time)."""
    expected = os.environ.get(env_name)
    if not expected:
        raise ForbiddenError(f"admin changes are disabled: set {env_name} on the server")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise UnauthorizedError("a valid admin bearer token is required (Authorization: Bearer)")
