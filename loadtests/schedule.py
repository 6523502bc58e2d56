"""Open-loop arrival schedules and how they are split across Locust worker processes.

Every worker computes the same schedule (from the run's seed) and takes every N-th arrival (its
index modulo the worker count): together the workers offer exactly the schedule one process
would, so the total offered rate is ``rate`` whatever the number of workers. Each worker draws
its texts and user ids from its own seed, ``worker_seed``. Pure functions: no Locust here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

WORKER_SEED_STRIDE = 1_000_003  # worker i draws from seed + i * stride (worker 0: the run's seed)


def arrival_offsets(rate: float, duration_s: float, arrivals: str, seed: int) -> Iterator[float]:
    """Intended send times (seconds from the start) of an open-loop schedule, in order."""
    if rate <= 0:
        return
    if arrivals in ("fixed", "constant"):
        yield from (i / rate for i in range(int(rate * duration_s)))
        return
    rng, t = random.Random(seed), 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return
        yield t


def worker_offsets(
    rate: float, duration_s: float, arrivals: str, seed: int, index: int, count: int
) -> Iterator[float]:
    """Worker ``index`` of ``count``'s share of the schedule: arrivals index, index+count, ..."""
    if not 0 <= index < count:
        raise ValueError(f"worker index {index} is outside 0..{count - 1}")
    for position, offset in enumerate(arrival_offsets(rate, duration_s, arrivals, seed)):
        if position % count == index:
            yield offset


def worker_seed(seed: int, index: int) -> int:
    """The seed of worker ``index``'s text and user-id draws (worker 0 keeps the run's seed)."""
    return seed + index * WORKER_SEED_STRIDE
