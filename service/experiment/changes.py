"""The admin API's rules: who may change the experiment (a bearer token), which changes are
valid, and the change a guardrail trip makes.

Changes need the bearer token held in the environment variable the config names; without one,
changes are refused.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import replace
from typing import Any

from service.config import ServingConfig
from service.errors import ConflictError, ForbiddenError, InvalidInputError, UnauthorizedError
from service.experiment.state import Changed, ExperimentState
from service.routing import check_weights

CHANGE_KEYS = ("weights", "salt", "coverage", "shadow", "disable", "enable")


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
        raise InvalidInputError(
            f"unknown keys {sorted(unknown)}: use {', '.join(CHANGE_KEYS)} (and version)"
        )
    names = settings.variant_names()
    control = state.control_of(settings)
    weights = dict(state.weights)
    if "weights" in body:
        new = body["weights"]
        if not isinstance(new, dict) or not new:
            raise InvalidInputError("weights must be an object of variant name -> number")
        if state.rollout is not None and state.rollout.active:
            raise ConflictError(
                f"a rollout of {state.rollout.challenger!r} is {state.rollout.status}: it sets "
                'the weights; abort it first (PUT /ab/rollout {"action": "abort"})'
            )
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


def check_version(version: int, based_on: int | None) -> None:
    """409 unless a change based on version ``based_on`` (None: any) may apply to ``version``."""
    if based_on is not None and version != based_on:
        raise ConflictError(
            f"the experiment state is at version {version}, not {based_on}: read it "
            "(GET /ab/config) and send the change again based on it",
            headers={"X-Experiment-Version": str(version)},
        )


def unless_moved(seen: int, new: Changed) -> Any:
    """An update that writes ``new`` only if the stored version is still ``seen``."""
    return lambda version, _: new if version == seen else None


def split_version(body: Any) -> tuple[Any, int | None]:
    """A change body without its ``"version"``, and that version (None when absent)."""
    if not isinstance(body, dict) or "version" not in body:
        return body, None
    rest = {k: v for k, v in body.items() if k != "version"}
    version = body["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInputError("version must be a positive integer (from GET /ab/config)")
    return rest, version
