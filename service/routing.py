"""Choosing the variant of a request: sticky by user id, forced by the request, or per request.

The assignment is a pure function of (salt, unit id, weights), so every worker and every replica
agrees without talking, and another language can reproduce it from the published test vectors
(tests/service/routing_vectors.json):

1. ``bucket = int.from_bytes(sha256(f"{salt}:{unit_id}".encode("utf-8")).digest()[:8], "big")
   % 10000``.
2. The challengers (every variant but the control, in config order) split the 10,000 buckets into
   equal fixed slots: challenger ``i`` of ``k`` owns ``[i * 10000 // k, (i + 1) * 10000 // k)``.
3. A challenger with traffic share ``s`` (its weight over the sum of weights) occupies
   ``round(s * 10000)`` buckets from its slot's start, at most the whole slot.
4. The control takes every bucket no challenger occupies.
5. With coverage ``c`` below 1, a unit takes part only when
   ``bucket_of(f"{salt}:coverage", unit_id) < round(c * 10000)`` (an independent hash); the
   others get the control, are recorded as ``excluded`` and left out of the statistics.

So raising a challenger's share moves users only from the control to that challenger, never back
and forth; changing the salt starts a new experiment. Adding or removing a challenger re-lays
the slots: start a new experiment (new salt) when you do.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from service.errors import InvalidInputError

BUCKETS = 10_000


@dataclass(frozen=True)
class Assignment:
    """Which variant answers, and how it was chosen."""

    variant: str
    forced: bool
    unit: str  # "user" (sticky), "request" (drawn per request), "forced" or "excluded"
    bucket: int | None = None


def bucket_of(salt: str, unit_id: str) -> int:
    """The bucket (0..9999) of a unit id in the experiment named by ``salt``."""
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class Occupied(NamedTuple):
    """The buckets ``[start, end)`` a challenger occupies."""

    start: int
    end: int
    variant: str


def layout(challengers: Sequence[str], shares: Mapping[str, float]) -> list[Occupied]:
    """The occupied ranges, one per challenger with traffic; the control takes the rest."""
    ranges = []
    k = len(challengers)
    for i, name in enumerate(challengers):
        start, end = i * BUCKETS // k, (i + 1) * BUCKETS // k
        taken = min(round(shares.get(name, 0.0) * BUCKETS), end - start)
        if taken > 0:
            ranges.append(Occupied(start, start + taken, name))
    return ranges


def slot_fraction(challengers: int) -> float:
    """The largest share one challenger can take: its slot, 1/k of the buckets."""
    return (BUCKETS // max(challengers, 1)) / BUCKETS


def check_weights(weights: Mapping[str, float], control: str) -> None:
    """Raise ValueError unless the weights can be routed: not all 0, each challenger in its slot."""
    total = sum(weights.values())
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be non-negative, got {dict(weights)}")
    if total <= 0:
        raise ValueError("variant weights must not all be 0")
    challengers = [name for name in weights if name != control]
    limit = slot_fraction(len(challengers))
    for name in challengers:
        if weights[name] / total > limit + 1e-9:
            raise ValueError(
                f"variant {name!r} has {weights[name] / total:.0%} of the traffic, more than its "
                f"slot ({limit:.0%} with {len(challengers)} challenger(s)): lower its weight "
                "or raise the control's"
            )


def variant_for_bucket(bucket: int, control: str, ranges: Sequence[Occupied]) -> str:
    """The variant owning ``bucket`` under ``ranges`` (from :func:`layout`)."""
    for start, end, name in ranges:
        if start <= bucket < end:
            return name
    return control


class Router:
    """Assigns requests to variants: sticky per user id, otherwise drawn by weight."""

    def __init__(
        self,
        weights: Mapping[str, float],
        control: str,
        salt: str,
        rng: random.Random | None = None,
        coverage: float = 1.0,
    ) -> None:
        total = sum(weights.values())
        self.names = list(weights)
        self.control = control
        self.salt = salt
        self.shares = {name: w / total for name, w in weights.items()}
        self.challengers = [n for n in self.names if n != control]
        self.ranges = layout(self.challengers, self.shares)
        self.rng = rng or random.Random()
        self.coverage = coverage
        self.covered = round(coverage * BUCKETS)

    def choose(self, user_id: str | None = None, forced: str | None = None) -> Assignment:
        """The variant for one request; a forced name must be a served variant."""
        if forced is not None:
            if forced not in self.shares:
                raise InvalidInputError(
                    f"unknown variant {forced!r}: this service serves {', '.join(self.names)}"
                )
            return Assignment(forced, forced=True, unit="forced")
        if user_id is not None:
            if (
                self.covered < BUCKETS
                and bucket_of(f"{self.salt}:coverage", user_id) >= self.covered
            ):
                return Assignment(self.control, forced=False, unit="excluded")
            bucket = bucket_of(self.salt, user_id)
            return Assignment(
                variant_for_bucket(bucket, self.control, self.ranges),
                forced=False,
                unit="user",
                bucket=bucket,
            )
        if self.covered < BUCKETS and self.rng.randrange(BUCKETS) >= self.covered:
            return Assignment(self.control, forced=False, unit="excluded")
        bucket = self.rng.randrange(BUCKETS)
        variant = variant_for_bucket(bucket, self.control, self.ranges)
        return Assignment(variant, forced=False, unit="request")
