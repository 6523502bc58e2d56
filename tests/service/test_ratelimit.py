"""Token buckets with an injected clock, the per-worker split, and the RateLimit-* headers."""

from __future__ import annotations

import pytest

from service.ratelimit import Limiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate_per_s=2.0, capacity=3, clock=clock)
    decisions = [bucket.take() for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.retry_after_s == 1  # 0.5 s to the next token, rounded up
    assert dict(refused.headers()) == {
        b"ratelimit-limit": b"3", b"ratelimit-remaining": b"0", b"ratelimit-reset": b"2",
        b"retry-after": b"1",
    }  # fmt: skip
    assert b"retry-after" not in dict(decisions[0].headers())
    clock.now += 0.5  # one token back
    assert bucket.take().allowed and not bucket.take().allowed
    clock.now += 60  # never more than the capacity
    assert [bucket.take().allowed for _ in range(4)] == [True, True, True, False]


def test_retry_after_counts_the_time_to_the_next_token() -> None:
    clock = Clock()
    bucket = TokenBucket(rate_per_s=0.1, capacity=1, clock=clock)
    assert bucket.take().allowed
    clock.now += 2.0
    refused = bucket.take()
    assert not refused.allowed and refused.retry_after_s == 8 and refused.reset_s == 8


def test_a_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="rate_per_s > 0 and capacity >= 1"):
        TokenBucket(0.0, 5)


def test_the_limiter_splits_a_key_across_workers_and_follows_changed_limits() -> None:
    clock = Clock()
    limiter = Limiter(default_rate_per_s=10.0, default_burst=4, workers=2, clock=clock)
    taken = [limiter.take("k1", None, None) for _ in range(3)]
    assert [d.allowed for d in taken if d] == [True, True, False]  # 4 / 2 workers
    assert taken[0] is not None and taken[0].limit == 2
    assert [d.allowed for d in (limiter.take("k2", None, 10) for _ in range(6)) if d] == [
        True] * 5 + [False]  # fmt: skip
    assert limiter.take("k3", 0.0, None) is None  # rate 0: unlimited
    assert limiter.take("k1", None, 20) is not None and limiter.take("k1", None, 20).allowed
    tiny = Limiter(1.0, 1, workers=4, clock=clock)
    decision = tiny.take("k", None, None)
    assert decision is not None and decision.allowed and decision.limit == 1  # at least one
