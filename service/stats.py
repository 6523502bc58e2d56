"""A/B statistics: Wilson intervals, the two-proportion z-test, the always-valid (mSPRT) p-value
and its path through paired-arm outcomes, the sample-ratio-mismatch check, labelled samples still
needed, McNemar's test, the p99 (tuneserve.percentiles' nearest rank).

Standard library only (``statistics.NormalDist``, ``math``), so the report runs wherever the store
can be read; tests check every figure against scipy and statsmodels on fixed inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

from tuneserve.percentiles import percentile, rank

_NORMAL = NormalDist()

SRM_ALPHA = 0.001  # the sample-ratio check flags a mismatch below this p-value

Counts = tuple[int, int, int, int]  # (successes_control, n_control, successes_chall., n_chall.)


def z_quantile(probability: float) -> float:
    """The standard normal quantile."""
    return _NORMAL.inv_cdf(probability)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) without observations."""
    if n == 0:
        return 0.0, 1.0
    z = z_quantile(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Difference:
    """Challenger minus control: the difference, its interval, and the two-sided z-test."""

    difference: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float


def two_proportion_test(
    successes_a: int, n_a: int, successes_b: int, n_b: int, confidence: float = 0.95
) -> Difference:
    """B minus A: pooled two-sided z-test; unpooled (Wald) interval for the difference."""
    if n_a == 0 or n_b == 0:
        return Difference(0.0, -1.0, 1.0, 0.0, 1.0)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    diff = p_b - p_a
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = diff / se_pooled if se_pooled > 0 else 0.0
    p_value = 2 * (1 - _NORMAL.cdf(abs(z))) if se_pooled > 0 else 1.0
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    half = z_quantile(0.5 + confidence / 2) * se
    return Difference(diff, diff - half, diff + half, z, p_value)


def msprt_likelihood_ratio(difference: Any, variance: Any, tau: float) -> Any:
    """The normal-mixture mSPRT statistic (Johari et al.) for an estimate ~ N(theta, variance)
    tested against theta = 0, with a N(0, tau^2) mixing distribution; elementwise on arrays
    (1 where the variance is not positive)."""
    difference, variance = np.asarray(difference, float), np.asarray(variance, float)
    positive = variance > 0
    safe = np.where(positive, variance, 1.0)
    total = safe + tau * tau
    exponent = np.minimum(tau * tau * difference * difference / (2 * safe * total), 700.0)
    ratio = np.where(positive, np.sqrt(safe / total) * np.exp(exponent), 1.0)
    return float(ratio) if ratio.ndim == 0 else ratio


def always_valid_p_values(checkpoints: Any, tau: float, running: float = 1.0) -> list[float]:
    """Running always-valid p-values, one per checkpoint ``(successes_a, n_a, successes_b, n_b)``
    (rows of cumulative counts in time order): p_k = min(1, min over j <= k of 1 / Lambda_j).

    ``running``: the p-value reached before the first checkpoint, to continue a path read in
    pieces. The variance of the difference is estimated at each checkpoint under the null
    hypothesis, from the two arms' pooled rate (shrunk towards 1/2 by one pseudo-observation, so
    that all-correct arms are not certain): with unequal arms (a 20% challenger) the arms' own
    rates underestimate it at small samples, and equal arms then cross alpha several times too
    often (BENCHMARKS.md, "The always-valid test under unequal arms"). Vectorised: half a
    million checkpoints take tens of milliseconds."""
    counts = np.asarray(checkpoints, dtype=float)
    if counts.size == 0:
        return []
    if counts.ndim != 2 or counts.shape[1] != 4:
        raise ValueError(f"checkpoints are rows of 4 counts, got shape {counts.shape}")
    s_a, n_a, s_b, n_b = counts.T
    both = (n_a > 0) & (n_b > 0)
    n_a, n_b = np.where(both, n_a, 1.0), np.where(both, n_b, 1.0)  # no division by zero
    pooled = (s_a + s_b + 0.5) / (n_a + n_b + 1)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    ratio = msprt_likelihood_ratio(s_b / n_b - s_a / n_a, variance, tau)
    inverse = np.where(both, 1.0 / ratio, 1.0)
    path = np.minimum(np.minimum.accumulate(inverse), min(1.0, running))
    return list(path.tolist())


def arm_checkpoints(
    outcomes: Iterable[tuple[str, bool]],
    control: str,
    challenger: str,
    start: Counts = (0, 0, 0, 0),
) -> np.ndarray:
    """Cumulative counts (one row of ``Counts`` per outcome of either arm) after each
    ``(variant, correct)`` outcome, in the order given: the always-valid test's path. ``start``:
    the counts before the first, to continue a path read in pieces."""
    arms = [(v == control, ok) for v, ok in outcomes if v in (control, challenger)]
    if not arms:
        return np.zeros((0, 4), dtype=np.int64)
    is_a, correct = np.array(arms, dtype=bool).T
    is_b = ~is_a
    columns = (is_a & correct, is_a, is_b & correct, is_b)
    return np.stack([np.cumsum(c) + s for c, s in zip(columns, start, strict=True)], axis=1)


class PathEnd(NamedTuple):
    """Where an always-valid path ends: the cumulative counts, and the p-value reached."""

    counts: Counts
    p_value: float


def path_end(
    outcomes: Iterable[tuple[str, bool]],
    control: str,
    challenger: str,
    tau: float,
    start: Counts = (0, 0, 0, 0),
    running: float = 1.0,
) -> PathEnd:
    """The counts and the always-valid p-value at the end of the path through ``outcomes``,
    continuing from ``start`` and the p-value ``running`` reached before them."""
    checkpoints = arm_checkpoints(outcomes, control, challenger, start)
    if not len(checkpoints):
        return PathEnd(start, running)
    s_a, n_a, s_b, n_b = (int(x) for x in checkpoints[-1])
    return PathEnd((s_a, n_a, s_b, n_b), always_valid_p_values(checkpoints, tau, running)[-1])


def chi2_survival(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with integer ``df`` (closed form)."""
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return math.exp(-half) * total
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(2 * x / math.pi) * math.exp(-half)
    for k in range(1, (df + 1) // 2):
        total += term
        term *= x / (2 * k + 1)
    return min(1.0, total)


@dataclass(frozen=True)
class SampleRatioCheck:
    """Whether the observed split of units matches the configured one."""

    chi2: float
    p_value: float
    mismatch: bool


def sample_ratio_check(
    observed: Mapping[str, int], expected_shares: Mapping[str, float], alpha: float = SRM_ALPHA
) -> SampleRatioCheck:
    """Chi-square goodness of fit of the observed counts to the configured shares."""
    names = [n for n in expected_shares if expected_shares[n] > 0]
    total = sum(observed.get(n, 0) for n in names)
    share_sum = sum(expected_shares[n] for n in names)
    if total == 0 or len(names) < 2:
        return SampleRatioCheck(0.0, 1.0, False)
    chi2 = 0.0
    for name in names:
        expected = total * expected_shares[name] / share_sum
        chi2 += (observed.get(name, 0) - expected) ** 2 / expected
    p_value = chi2_survival(chi2, len(names) - 1)
    return SampleRatioCheck(chi2, p_value, p_value < alpha)


def samples_needed(
    p_control: float, minimum_effect: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Labelled samples per arm to detect ``minimum_effect`` (absolute) with a two-sided test."""
    p_other = min(max(p_control + minimum_effect, 0.0), 1.0)
    z = z_quantile(1 - alpha / 2) + z_quantile(power)
    variance = p_control * (1 - p_control) + p_other * (1 - p_other)
    return math.ceil(z * z * variance / (minimum_effect * minimum_effect))


@dataclass(frozen=True)
class McNemar:
    """Paired outcomes of two models on the same labelled inputs."""

    only_a: int  # a right, b wrong
    only_b: int  # b right, a wrong
    p_value: float  # exact two-sided binomial test on the discordant pairs


def mcnemar_exact(only_a: int, only_b: int) -> McNemar:
    """McNemar's exact test: under the null each discordant pair goes either way with p 1/2."""
    n = only_a + only_b
    if n == 0:
        return McNemar(only_a, only_b, 1.0)
    k = min(only_a, only_b)
    # P(X <= k) for X ~ Binomial(n, 1/2), summed in log space so large n does not overflow
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top + math.log(sum(math.exp(v - top) for v in logs)) - n * math.log(2))
    return McNemar(only_a, only_b, min(1.0, 2 * tail))


def p99_rank(n: int) -> int:
    """The 1-based rank (in ascending order) of the 99th percentile of ``n`` values (nearest
    rank, tuneserve.percentiles): the store reads only the values from that rank up."""
    return rank(n, 99)


def p99(values: list[float]) -> float:
    """The 99th percentile of ``values``: nearest rank, the project's one definition
    (tuneserve.percentiles)."""
    return percentile(values, 99)
