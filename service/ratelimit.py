"""Per-key token buckets of one worker, and the RateLimit-* headers they answer with.

What a limit means: a key's ``rate_per_s`` and ``burst`` are per replica, split evenly across
the replica's workers (each worker's bucket fills at ``rate / workers`` and holds ``burst /
workers``, at least one request). The kernel spreads connections across the workers, so a client
with many connections gets about the key's rate from a replica; a client that sends everything
over one keep-alive connection reaches one worker, and so gets that worker's share. Replicas do
not share buckets: behind a Service with N replicas (an HPA changes N) a key gets up to N times
its rate in all. That is the honest bound of a limiter without shared state; a hard global
quota needs a shared counter (a gateway, Redis) in front of the service.

Headers (draft-ietf-httpapi-ratelimit-headers), on every answer to a limited key:
``RateLimit-Limit`` the bucket's capacity, ``RateLimit-Remaining`` whole requests left now,
``RateLimit-Reset`` seconds until the bucket is full again; a 429 adds ``Retry-After``, the
seconds until the next request is allowed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Decision:
    """What the bucket said: allowed or not, and the headers to send either way."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int  # 0 when allowed

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The RateLimit-* headers (and Retry-After when refused), as ASGI header pairs."""
        out = [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset_s),
        ]
        if not self.allowed:
            out.append((b"retry-after", b"%d" % self.retry_after_s))
        return out


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate_per_s``; each request takes one."""

    def __init__(
        self, rate_per_s: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or capacity < 1:
            raise ValueError(
                f"a bucket needs rate_per_s > 0 and capacity >= 1, got {rate_per_s:g}, {capacity:g}"
            )
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self.tokens = capacity
        self.clock = clock
        self.at = clock()

    def take(self) -> Decision:
        """Take a token if there is one; the decision and its headers."""
        now = self.clock()
        tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self.tokens = tokens
        retry_after = 0 if allowed else max(1, math.ceil((1.0 - tokens) / self.rate_per_s))
        return Decision(
            allowed=allowed,
            limit=int(self.capacity),
            remaining=int(tokens),
            reset_s=math.ceil((self.capacity - tokens) / self.rate_per_s),
            retry_after_s=retry_after,
        )


class Limiter:
    """The buckets of one worker, one per key id, made on first use."""

    def __init__(
        self,
        default_rate_per_s: float,
        default_burst: int,
        workers: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_rate_per_s = default_rate_per_s
        self.default_burst = default_burst
        self.workers = workers
        self.clock = clock
        self.buckets: dict[str, tuple[float, int, TokenBucket | None]] = {}

    def take(self, kid: str, rate_per_s: float | None, burst: int | None) -> Decision | None:
        """The decision for one request of key ``kid`` (None: the key is unlimited)."""
        rate = self.default_rate_per_s if rate_per_s is None else rate_per_s
        size = self.default_burst if burst is None else burst
        held = self.buckets.get(kid)
        if held is None or held[0] != rate or held[1] != size:  # new, or its limits changed
            bucket = None
            if rate > 0:
                share = max(1.0, size / self.workers)
                bucket = TokenBucket(rate / self.workers, share, self.clock)
            held = self.buckets[kid] = (rate, size, bucket)
        return None if held[2] is None else held[2].take()
