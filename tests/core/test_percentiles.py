"""The one percentile definition (nearest rank) against its direct reading and against numpy."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from tuneserve.errors import DataError
from tuneserve.percentiles import fraction, percentile, percentiles, rank

QS = (0.0, 0.1, 1.0, 7.0, 25.0, 29.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0)


def nearest_rank(values: list[float], q: float) -> float:
    """The definition read directly: the ceil(q/100 * n)-th smallest value (at least the 1st),
    q the decimal it is written as, in decimal arithmetic."""
    ordered = sorted(values)
    k = math.ceil(Decimal(repr(q)) * len(ordered) / 100)
    return ordered[max(k, 1) - 1]


def _arrays(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = [np.array([rng.random()]), np.array([3.0, 3.0]), np.arange(1.0, 101.0)]
    for n in (*range(1, 12), 99, 100, 101, 1000, 1001):
        arrays.append(rng.exponential(20.0, n))  # latencies: a long right tail
        arrays.append(rng.integers(0, 4, n).astype(float))  # heavy ties
    return arrays


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_the_definition_and_numpy_inverted_cdf(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    qs = (*QS, *(float(q) for q in rng.uniform(0, 100, 20).round(3)))
    for values in _arrays(seed):
        got = percentiles(values, qs)
        assert list(got) == list(qs)  # keyed by each q as given, in order
        for q in qs:
            expected = nearest_rank(list(values), q)
            assert got[q] == expected, (len(values), q)
            assert percentile(values, q) == expected
            assert got[q] in values  # an observed value, never interpolated
            numpy = np.quantile(values, fraction(q), method="inverted_cdf")
            assert got[q] == numpy, (len(values), q)
            if math.ceil(len(values) * (q / 100)) == rank(len(values), q):  # see below
                assert got[q] == np.percentile(values, q, method="inverted_cdf"), (len(values), q)


def test_the_rank_is_exact_where_float64_overshoots() -> None:
    """np.percentile and percentile_disc(q / 100) evaluate ceil(n * q/100) in float64, which
    overshoots where the product is a whole number; fraction(q) is the float they need."""
    values = np.arange(1.0, 1001.0)
    assert np.percentile(values, 99.9, method="inverted_cdf") == 1000.0  # 999.0000000000001
    assert percentile(values, 99.9) == 999.0 == nearest_rank(list(values), 99.9)
    assert np.quantile(values, fraction(99.9), method="inverted_cdf") == 999.0
    assert np.percentile(values[:100], 7, method="inverted_cdf") == 8.0  # 7.000000000000001
    assert percentile(values[:100], 7) == 7.0
    n = np.arange(1, 1_000_001, dtype=np.int64)
    for q in (0.1, 7.0, 29.0, 33.3, 50.0, 95.0, 99.0, 99.5, 99.9, 99.99, 12.345):
        a, b = Decimal(repr(q)).as_integer_ratio()
        exact = -(-a * n // (100 * b))  # ceil(q/100 * n) in integers
        assert (np.ceil(n * fraction(q)).astype(np.int64) == exact).all(), q
        assert [rank(int(k), q) for k in n[:3000]] == list(exact[:3000]), q


def test_worked_examples() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0  # rank ceil(2) = 2, no averaging
    assert percentile(range(1, 101), 99) == 99.0
    assert percentile(range(1, 101), 99.5) == 100.0
    assert percentile([1.0] * 98 + [50.0, 60.0], 99) == 50.0
    assert percentile([5.0], 99) == percentile([5.0], 0.001) == 5.0  # n = 1: that value
    assert percentile([2.0, 1.0], 100) == 2.0 and percentile([2.0, 1.0], 0) == 1.0
    assert rank(100, 7) == 7 and percentile(range(1, 101), 7) == 7.0
    assert [rank(1000, q) for q in (50, 95, 99, 99.9)] == [500, 950, 990, 999]


def test_input_forms() -> None:
    values = [3.0, 1.0, 2.0]
    for form in (values, tuple(values), np.array(values), iter(values), (v for v in values)):
        assert percentiles(form, (50, 100)) == {50: 2.0, 100: 3.0}
    assert percentiles([1.0], ()) == {}
    assert fraction(50) == 0.5 and fraction(99) == 0.99 and fraction(100) == 1.0
    assert fraction(99.9) < 99.9 / 100 and fraction(7) < 0.07  # the float just below


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="a percentile of no values is undefined"):
        percentile([], 50)
    with pytest.raises(DataError, match="a percentile of no values is undefined"):
        percentiles(np.array([]), (50,))
    for q in (-1.0, 100.5, float("nan")):
        with pytest.raises(DataError, match="a percentile must be from 0 to 100, got"):
            percentile([1.0], q)
    with pytest.raises(DataError, match="the values hold NaN"):
        percentile([1.0, float("nan")], 50)
    with pytest.raises(DataError, match=r"a flat list of values, got shape \(2, 2\)"):
        percentile(np.ones((2, 2)), 50)
    assert issubclass(DataError, ValueError)
