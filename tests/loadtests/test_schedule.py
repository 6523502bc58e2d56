"""Open-loop schedules split across workers: together exactly the one-process schedule."""

from __future__ import annotations

import pytest

from loadtests.schedule import arrival_offsets, worker_offsets, worker_seed


@pytest.mark.parametrize("arrivals", ["poisson", "fixed"])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_workers_share_the_one_process_schedule_exactly(arrivals: str, count: int) -> None:
    whole = list(arrival_offsets(50.0, 20.0, arrivals, seed=7))
    shares = [list(worker_offsets(50.0, 20.0, arrivals, 7, i, count)) for i in range(count)]
    assert sorted(t for share in shares for t in share) == whole  # nothing lost or doubled
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1  # rate / N each
    if arrivals == "fixed":
        assert len(whole) == 1000  # 50/s for 20 s


def test_the_offered_rate_is_the_rate_and_seeds_differ_per_worker() -> None:
    assert 0.95 * 10_000 < len(list(arrival_offsets(100.0, 100.0, "poisson", seed=1))) < 10_500
    assert list(arrival_offsets(0.0, 10.0, "poisson", 1)) == []
    assert worker_seed(5, 0) == 5  # one process draws what it always drew
    assert len({worker_seed(5, i) for i in range(64)}) == 64
    with pytest.raises(ValueError, match=r"worker index 2 is outside 0\.\.1"):
        list(worker_offsets(10.0, 1.0, "fixed", 0, 2, 2))
