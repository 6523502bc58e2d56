"""A/B statistics against scipy and statsmodels on fixed inputs, and the mSPRT under the null."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from service.stats import (
    SRM_ALPHA,
    always_valid_p_values,
    arm_checkpoints,
    chi2_survival,
    mcnemar_exact,
    msprt_likelihood_ratio,
    p99,
    path_end,
    sample_ratio_check,
    samples_needed,
    two_proportion_test,
    wilson_interval,
)


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (7, 10), (10, 10), (412, 500), (1, 3)])
def test_wilson_matches_statsmodels(successes: int, n: int) -> None:
    expected = proportion_confint(successes, n, alpha=0.05, method="wilson")
    assert wilson_interval(successes, n) == pytest.approx(expected, abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("s_a", "n_a", "s_b", "n_b"), [(700, 872, 776, 872), (45, 100, 52, 110), (90, 100, 90, 100)]
)
def test_two_proportion_test_matches_statsmodels(s_a: int, n_a: int, s_b: int, n_b: int) -> None:
    result = two_proportion_test(s_a, n_a, s_b, n_b)
    z, p = proportions_ztest([s_b, s_a], [n_b, n_a])
    low, high = confint_proportions_2indep(s_b, n_b, s_a, n_a, method="wald", compare="diff")
    assert result.difference == pytest.approx(s_b / n_b - s_a / n_a)
    assert result.z == pytest.approx(0.0 if np.isnan(z) else z, abs=1e-9)
    assert result.p_value == pytest.approx(1.0 if np.isnan(p) else p, abs=1e-9)
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high), abs=1e-9)


@pytest.mark.parametrize(("difference", "variance", "tau"),
                         [(0.03, 1e-4, 0.05), (0.0, 4e-4, 0.1), (-0.02, 2.5e-5, 0.01)])  # fmt: skip
def test_msprt_matches_the_mixture_integral(difference: float, variance: float, tau: float) -> None:
    """The closed form equals the normal mixture of likelihood ratios, integrated numerically."""
    sd = math.sqrt(variance)

    def ratio(theta: float) -> float:
        return float(stats.norm.pdf(difference, theta, sd) / stats.norm.pdf(difference, 0, sd)
                     * stats.norm.pdf(theta, 0, tau))  # fmt: skip

    numeric, _ = integrate.quad(ratio, -10 * tau, 10 * tau, points=[difference])
    assert msprt_likelihood_ratio(difference, variance, tau) == pytest.approx(numeric, rel=1e-6)


def test_always_valid_p_values_keep_false_positives_under_alpha_when_peeking() -> None:
    """Under the null, peeking after every 100 labels per arm up to 3,000 rejects at most alpha
    of the time (a fixed-horizon z-test peeked at this often would reject far more)."""
    rng = np.random.default_rng(7)
    alpha, sims, peeks, step = 0.05, 400, 30, 100
    rejected_msprt = rejected_naive = 0
    for _ in range(sims):
        a = np.cumsum(rng.random(peeks * step) < 0.8)[step - 1 :: step]
        b = np.cumsum(rng.random(peeks * step) < 0.8)[step - 1 :: step]
        n = np.arange(1, peeks + 1) * step
        checkpoints = [(int(x), int(m), int(y), int(m)) for x, y, m in zip(a, b, n, strict=True)]
        rejected_msprt += min(always_valid_p_values(checkpoints, tau=0.05)) <= alpha
        rejected_naive += any(two_proportion_test(*c).p_value <= alpha for c in checkpoints)
    assert rejected_msprt / sims <= alpha
    assert rejected_naive / sims > 2 * alpha  # the problem the always-valid p-value solves


def test_always_valid_p_value_detects_a_real_difference() -> None:
    rng = np.random.default_rng(3)
    a = np.cumsum(rng.random(4000) < 0.80)[99::100]
    b = np.cumsum(rng.random(4000) < 0.88)[99::100]
    n = np.arange(1, 41) * 100
    p = always_valid_p_values(
        [(int(x), int(m), int(y), int(m)) for x, y, m in zip(a, b, n, strict=True)], 0.05
    )
    assert p == sorted(p, reverse=True)  # never increases
    assert p[-1] < 0.01


def _p_values_one_by_one(checkpoints: list[tuple[int, int, int, int]], tau: float) -> list[float]:
    """The always-valid path as its definition reads, one checkpoint at a time."""
    running, path = 1.0, []
    for s_a, n_a, s_b, n_b in checkpoints:
        if n_a and n_b:
            pooled = (s_a + s_b + 0.5) / (n_a + n_b + 1)  # the rate under the null
            variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
            total = variance + tau * tau
            diff = s_b / n_b - s_a / n_a
            ratio = math.sqrt(variance / total) * math.exp(
                min(tau * tau * diff * diff / (2 * variance * total), 700.0)
            )
            running = min(running, 1.0 / ratio)
        path.append(running)
    return path


@pytest.mark.parametrize("share", [0.5, 0.2])
def test_equal_arms_cross_alpha_at_most_alpha_of_the_time_even_unequal(share: float) -> None:
    """Watched after every outcome, equal arms must end below alpha at most alpha of the time,
    also with a small challenger share and a wide mixing tau: the arms' own rates made the
    variance too small there (at share 0.2, tau 0.2: 89 of these 1000 paths crossed 0.05)."""
    rng = np.random.default_rng(5)
    crossed, paths = 0, 1000
    for _ in range(paths):
        on_b, correct = rng.random(1600) < share, rng.random(1600) < 0.8
        counts = np.stack([np.cumsum(~on_b & correct), np.cumsum(~on_b),
                           np.cumsum(on_b & correct), np.cumsum(on_b)], axis=1)  # fmt: skip
        crossed += always_valid_p_values(counts, tau=0.2)[-1] <= 0.05
    assert crossed / paths <= 0.05, f"{crossed} of {paths} equal-arm paths crossed alpha 0.05"


def test_the_vectorised_path_equals_the_definition_and_continues_in_pieces() -> None:
    rng = np.random.default_rng(11)
    outcomes = [
        (str(rng.choice(["a", "b", "other"])), bool(rng.random() < 0.8)) for _ in range(3000)
    ]
    outcomes[:5] = [("a", True)] * 5  # a start with one arm empty
    checkpoints = arm_checkpoints(outcomes, "a", "b")
    assert len(checkpoints) == sum(v != "other" for v, _ in outcomes)
    assert checkpoints[4].tolist() == [5, 5, 0, 0]
    assert checkpoints[-1][1] + checkpoints[-1][3] == len(checkpoints)
    rows = [tuple(int(x) for x in row) for row in checkpoints]
    path = always_valid_p_values(checkpoints, 0.05)
    assert path == pytest.approx(_p_values_one_by_one(rows, 0.05), rel=1e-12)
    # read in two pieces: the counts and the p-value carry over
    head = arm_checkpoints(outcomes[:1000], "a", "b")
    tail = arm_checkpoints(outcomes[1000:], "a", "b", start=tuple(int(x) for x in head[-1]))
    assert np.array_equal(np.vstack([head, tail]), checkpoints)
    resumed = always_valid_p_values(tail, 0.05, running=always_valid_p_values(head, 0.05)[-1])
    assert resumed == path[len(head) :]
    assert always_valid_p_values([], 0.05) == [] and len(arm_checkpoints([], "a", "b")) == 0
    assert path_end(outcomes, "a", "b", 0.05) == (rows[-1], path[-1])
    assert path_end([], "a", "b", 0.05, start=(1, 2, 3, 4), running=0.5) == ((1, 2, 3, 4), 0.5)
    with pytest.raises(ValueError, match="rows of 4 counts"):
        always_valid_p_values([(1, 2, 3, 4, 5)], 0.05)
    assert type(msprt_likelihood_ratio(0.1, 0.01, 0.05)) is float


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("x", [0.1, 1.0, 3.84, 10.0, 16.0, 40.0])
def test_chi2_survival_matches_scipy(x: float, df: int) -> None:
    assert chi2_survival(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-9, abs=1e-300)


def test_sample_ratio_mismatch() -> None:
    flagged = sample_ratio_check({"baseline": 5200, "tuned": 4800}, {"baseline": 0.5, "tuned": 0.5})
    assert flagged.mismatch and flagged.p_value == pytest.approx(
        stats.chisquare([5200, 4800]).pvalue
    )
    fair = sample_ratio_check({"baseline": 5040, "tuned": 4960}, {"baseline": 0.5, "tuned": 0.5})
    assert not fair.mismatch
    three = sample_ratio_check({"c": 5000, "a": 3000, "b": 2000}, {"c": 0.5, "a": 0.3, "b": 0.2})
    assert not three.mismatch and three.chi2 == 0
    assert not sample_ratio_check({}, {"c": 1.0, "a": 1.0}).mismatch


def test_the_sample_ratio_alpha_is_one_in_a_thousand() -> None:
    assert SRM_ALPHA == 0.001  # DESIGN.md's figure; the report and the gauges use this one
    split = {"baseline": 0.5, "tuned": 0.5}
    near = sample_ratio_check({"baseline": 5163, "tuned": 4837}, split)  # p = 0.0011
    past = sample_ratio_check({"baseline": 5166, "tuned": 4834}, split)  # p = 0.0009
    assert not near.mismatch and near.p_value > SRM_ALPHA
    assert past.mismatch and past.p_value < SRM_ALPHA


def test_p99_is_the_nearest_rank() -> None:
    assert p99([float(i) for i in range(1, 101)]) == 99.0
    assert p99([5.0]) == 5.0
    assert p99([1.0] * 98 + [50.0, 60.0]) == 50.0  # rank 99 of 100


def test_samples_needed_matches_the_textbook_and_statsmodels() -> None:
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # (z_a/2 + z_b)^2 (p1 q1 + p2 q2) / d^2
    assert samples_needed(0.5, 0.05) == math.ceil(z * z * (0.25 + 0.55 * 0.45) / 0.05**2) == 1562
    arcsine = NormalIndPower().solve_power(
        effect_size=proportion_effectsize(0.55, 0.5), alpha=0.05, power=0.8
    )
    assert samples_needed(0.5, 0.05) == pytest.approx(arcsine, rel=0.01)
    assert samples_needed(0.88, 0.02) > samples_needed(0.88, 0.04)


@pytest.mark.parametrize(("only_a", "only_b"), [(0, 0), (0, 7), (3, 10), (37, 108), (480, 560)])
def test_mcnemar_exact_matches_scipy(only_a: int, only_b: int) -> None:
    test = mcnemar_exact(only_a, only_b)
    n = only_a + only_b
    expected = stats.binomtest(only_a, n, 0.5).pvalue if n else 1.0
    assert test.p_value == pytest.approx(expected, rel=1e-9)
