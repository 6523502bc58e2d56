"""Choosing the variant of a request: forced by the request, else drawn by weight."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from service.errors import InvalidInputError


@dataclass(frozen=True)
class Assignment:
    """Which variant answers, and whether the request forced it (forced traffic is not compared)."""

    variant: str
    forced: bool


class WeightedRouter:
    """Draws a variant by weight for every unforced request."""

    def __init__(self, weights: Mapping[str, float], rng: random.Random | None = None) -> None:
        total = sum(weights.values())
        self.names = list(weights)
        self.weights = {name: w / total for name, w in weights.items()}
        self.rng = rng or random.Random()

    def choose(self, forced: str | None = None) -> Assignment:
        """The variant for one request; a forced name must be a served variant."""
        if forced is not None:
            if forced not in self.weights:
                raise InvalidInputError(
                    f"unknown variant {forced!r}: this service serves {', '.join(self.names)}"
                )
            return Assignment(forced, forced=True)
        name = self.rng.choices(self.names, weights=[self.weights[n] for n in self.names])[0]
        return Assignment(name, forced=False)
