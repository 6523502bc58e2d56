"""HDR latency histograms: nearest-rank percentiles within their precision, merged exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loadtests.histograms import (
    Recorder,
    decode,
    new_histogram,
    percentile_ms,
    record_ms,
)
from tests.loadtests.conftest import within_precision

QS = (50.0, 90.0, 95.0, 99.0, 99.9, 100.0)


def test_a_million_samples_merged_from_four_histograms_match_numpy() -> None:
    rng = np.random.default_rng(15)
    samples_ms = np.round(rng.lognormal(mean=np.log(20), sigma=1.0, size=1_000_000), 3)
    samples_ms = np.clip(samples_ms, 0.001, 60_000)
    encoded = []
    for part in np.array_split(samples_ms, 4):  # four workers, each its own histogram
        hist = new_histogram()
        for value in part.tolist():
            record_ms(hist, value)
        encoded.append(hist.encode())
    merged = new_histogram()
    for blob in encoded:
        merged.decode_and_add(blob)
    assert merged.get_total_count() == 1_000_000
    for q in QS:
        exact = float(np.percentile(samples_ms, q, method="inverted_cdf"))
        got = percentile_ms(merged, q)
        assert within_precision(got, exact), (q, got, exact)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 101, 1001])
def test_nearest_rank_on_small_samples_is_exact_below_2ms(n: int) -> None:
    """Below 2.048 ms every microsecond has its own bucket: the percentile is the sample."""
    rng = np.random.default_rng(n)
    samples = rng.integers(1, 2000, size=n) / 1000
    hist = new_histogram()
    for value in samples.tolist():
        record_ms(hist, value)
    for q in (1.0, 29.0, 50.0, 57.0, 90.0, 99.0, 99.9, 100.0):
        exact = float(np.percentile(samples, q, method="inverted_cdf"))
        assert percentile_ms(hist, q) == pytest.approx(exact, abs=1e-9), (n, q)
    assert percentile_ms(new_histogram(), 50) is None


def test_recorders_merged_equal_one_recorder_of_everything() -> None:
    rng = np.random.default_rng(3)
    events = [("predict" if rng.random() > 0.05 else "dropped", "ab"[int(rng.random() * 2)],
               200 if rng.random() > 0.1 else 503, float(rng.exponential(30)),
               bool(rng.random() > 0.9), bool(rng.random() > 0.2), int(rng.integers(0, 5)))
              for _ in range(3000)]  # fmt: skip
    events += [("feedback", "a", 200, 3.0, False, True, 1)]
    one, workers, master = Recorder(), [Recorder(), Recorder(), Recorder()], Recorder()
    for i, event in enumerate(events):
        one.record(*event)
        workers[i % 3].record(*event)
        if i % 500 == 0:  # periodic deltas, sent through JSON as Locust's messages are
            for worker in workers:
                master.merge(json.loads(json.dumps(worker.take())))
    for worker in workers:
        master.merge(json.loads(json.dumps(worker.take())))
    assert set(master.rows) == set(one.rows) == {"all", "a", "b", "feedback"}
    for name, counts in one.rows.items():
        got = master.rows[name]
        assert (got.requests, got.failures, got.dropped, got.late, got.max_ms) == (
            counts.requests, counts.failures, counts.dropped, counts.late, counts.max_ms
        )  # fmt: skip
        assert [percentile_ms(got.hist, q) for q in QS] == [
            percentile_ms(counts.hist, q) for q in QS
        ]
    assert set(master.windows) == set(one.windows)
    for key, counts in one.windows.items():
        assert master.windows[key].hist.get_total_count() == counts.hist.get_total_count()
    assert all(c.requests == 0 for c in Recorder().rows.values())
    encoded = one.rows["all"].hist.encode().decode()
    assert decode(encoded).get_total_count() == one.rows["all"].hist.get_total_count()
