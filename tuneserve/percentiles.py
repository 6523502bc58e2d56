"""The project's one percentile definition: nearest rank, an observed value never interpolated.

The q-th percentile (0 < q <= 100) of n >= 1 values is the k-th smallest of them, with
k = ceil(q/100 * n). So p50 of [1, 2, 3, 4] is 2, and p99 of 100 values is the 99th smallest.
Why this one:
- it is always a value that was observed (a latency some request really had), never a point
  between two of them, so "p99 = 120 ms" means one request in a hundred took 120 ms or more;
- PostgreSQL computes the same figure in the database, ``percentile_disc(p) WITHIN GROUP
  (ORDER BY x)`` with p = ``fraction(q)``, so the A/B report need not fetch every latency row
  (service/store.py); numpy computes it as ``np.quantile(x, fraction(q), method="inverted_cdf")``;
- the load tests' merged HDR histograms (loadtests/histograms.py) take this same ``rank`` and
  report the end of that sample's bucket, so they agree to within the histogram's significant
  digits (the `hdrhistogram` package's own ``get_value_at_percentile`` rounds the rank to the
  nearest instead, round(q/100 * n), one rank off at times, so it is not used).

The rank is exact: q is read as the decimal it is written as (99.9 is 999/10) and k computed in
rational arithmetic. numpy and PostgreSQL evaluate ceil(n * p) in float64, which overshoots where
q/100 * n is a whole number: ``np.percentile(x, 99.9, method="inverted_cdf")`` of 1000 values
is the largest (100 * 0.999 in float64 is 999.0000000000001), not the 999th, and likewise q = 7,
n = 100. ``fraction(q)`` is therefore q/100 rounded down to the float below it, with which their
float ceil(n * p) is the exact rank for every n below 10^10 and q with up to three decimals (the
float error, below n * 2^-51, stays under the smallest non-zero fractional part, 10^-5).
q = 0 gives the smallest value (the rank is at least 1), as numpy and PostgreSQL do. An empty
input, a q outside [0, 100] and NaN among the values are errors (``DataError``). ``rank`` and
``fraction`` need no numpy (the locustfile imports them under gevent).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from tuneserve.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    Values = Iterable[float] | np.ndarray[Any, Any]  # latencies, as a list or a numpy array


def _decimal(q: float) -> Fraction:
    """``q`` as the decimal it is written as (its shortest repr), checked to lie in [0, 100]."""
    if not 0 <= q <= 100:  # also rejects NaN
        raise DataError(f"a percentile must be from 0 to 100, got {q!r}")
    return Fraction(repr(float(q)))


def rank(n: int, q: float) -> int:
    """The 1-based rank, among ``n`` sorted values, of the ``q``-th percentile."""
    exact = _decimal(q)
    if n < 1:
        raise DataError("a percentile of no values is undefined: pass at least one value")
    return min(n, max(1, math.ceil(exact * n / 100)))


def fraction(q: float) -> float:
    """``q`` (0 to 100) as the fraction PostgreSQL's ``percentile_disc`` (and numpy's quantile)
    take: q/100, or the float just below it where the nearest float is above it, so that their
    float64 rank ceil(n * fraction) is the exact one (see the module docstring)."""
    exact = _decimal(q) / 100
    nearest = float(exact)
    return nearest if Fraction(nearest) <= exact else math.nextafter(nearest, 0.0)


def percentiles(values: Values, qs: Sequence[float]) -> dict[float, float]:
    """The nearest-rank percentiles ``qs`` (each from 0 to 100) of ``values``, with one sort:
    ``{q: value}``, keyed by each q as given."""
    import numpy as np

    array = np.sort(np.asarray(values if isinstance(values, np.ndarray) else list(values), float))
    if array.ndim != 1:
        raise DataError(f"percentiles take a flat list of values, got shape {array.shape}")
    if np.isnan(array[-1:]).any():  # NaN sorts last
        raise DataError("the values hold NaN: a percentile needs every value to be a number")
    return {q: float(array[rank(len(array), q) - 1]) for q in qs}


def percentile(values: Values, q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 to 100) of ``values``."""
    return percentiles(values, (q,))[q]
