"""A progressive rollout as the experiment state keeps it: the plan and how far it has gone.

The plan (challenger, steps, minimums, alpha, switches) is the serving config's ``[rollout]``
or the admin API's, validated by ``RolloutConfig`` either way; the progress (step, status, when
the plan and the step began, the challenger's labelled count at the step's start) is written by
the leader at each transition (service/experiment/rollout.py). Both travel in the stored
experiment state, so every worker of every replica routes by the same step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from pydantic import ValidationError

from service.config import RolloutConfig, ServingConfig
from service.errors import InvalidInputError

ACTIVE = ("running", "paused")  # a plan in these statuses drives the challenger's weight
STATUSES = (*ACTIVE, "promoted", "rolled_back", "aborted")


@dataclass(frozen=True)
class Rollout:
    """One rollout plan and its progress."""

    challenger: str
    steps: tuple[float, ...]
    min_samples: int
    min_step_s: float
    alpha: float
    promote: bool = True
    rollback: bool = True
    step: int = 0  # index into steps
    status: str = "running"
    started_at: float = 0.0  # when the plan began: its test counts what was answered since
    step_started_at: float = 0.0
    step_labelled: int = 0  # the challenger's labelled predictions when the step began
    control: str = ""  # the control it was rolled out against

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def share(self) -> float:
        """The challenger's traffic share the plan asks for now."""
        if self.status == "promoted":
            return 1.0
        return self.steps[self.step] if self.active else 0.0

    def stamped(self, now: float) -> Rollout:
        """The plan as started at ``now`` (its first step begins then)."""
        return replace(self, started_at=now, step_started_at=now, step_labelled=0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"steps": list(self.steps)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rollout:
        fields = dict(data)
        fields["steps"] = tuple(float(s) for s in fields["steps"])
        return cls(**fields)


def plan_of(config: RolloutConfig, settings: ServingConfig, control: str) -> Rollout:
    """The plan a validated ``[rollout]`` (or admin body) describes, not started yet."""
    alpha = settings.experiment.alpha if config.alpha is None else config.alpha
    return Rollout(
        config.challenger, tuple(config.steps), config.min_samples, config.min_step_s, alpha,
        config.promote, config.rollback, control=control,
    )  # fmt: skip


def plan_from_body(body: Any, settings: ServingConfig, control: str) -> Rollout:
    """The plan of an admin body's ``"plan"`` object; 400 naming the problem."""
    if not isinstance(body, dict):
        raise InvalidInputError("plan must be an object with challenger, steps, min_samples ...")
    try:
        config = RolloutConfig.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInputError(f"invalid rollout plan: {problems}") from None
    if not config.challenger:
        raise InvalidInputError("plan.challenger must name the variant to roll out")
    return plan_of(config, settings, control)


def ramp_weights(
    weights: Mapping[str, float], disabled: tuple[str, ...], control: str, challenger: str,
    share: float,
) -> dict[str, float]:  # fmt: skip
    """Weights that give ``challenger`` exactly ``share`` of the traffic, taken from or given
    back to the control alone: every other variant keeps its share. Only weights change, so
    under service/routing.py's slots the sticky users move only between the control and the
    challenger, and a challenger's users at 5% are still its users at 25%."""
    effective = {n: 0.0 if n in disabled else w for n, w in weights.items()}
    total = sum(effective.values())
    scale = 1 / total if total > 0 else 0.0
    new = {name: weight * scale for name, weight in weights.items()}  # shares of the traffic
    others = sum(new[n] for n in new if n not in (control, challenger) and n not in disabled)
    new[challenger] = share
    new[control] = max(0.0, 1.0 - share - others)
    return new
