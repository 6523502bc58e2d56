"""The calibration math against hand-computed cases and a synthetic known temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.analysis.calibration import (
    brier_score,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    log_softmax,
    max_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)


def test_ece_of_a_hand_computed_set() -> None:
    # 15 bins: 0.95 falls in (14/15, 1], 0.65 in (9/15, 10/15]
    confidence = np.array([0.95, 0.95, 0.65, 0.65, 0.65])
    correct = np.array([True, False, True, True, False])
    # bin 14: accuracy 1/2, confidence 0.95, 2 of 5; bin 9: accuracy 2/3, confidence 0.65, 3 of 5
    expected = 2 / 5 * abs(0.5 - 0.95) + 3 / 5 * abs(2 / 3 - 0.65)
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.19)
    assert max_calibration_error(confidence, correct) == pytest.approx(0.45)
    bins = reliability_bins(confidence, correct)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 5
    assert [b["count"] for b in bins if b["count"]] == [3, 2]
    assert bins[9]["lower"] == pytest.approx(9 / 15) and bins[9]["accuracy"] == pytest.approx(2 / 3)


def test_ece_with_other_bins_and_edges() -> None:
    # 10 bins, right-closed: 0.7 belongs to (0.6, 0.7], 1.0 to the last bin, 0.0 to the first
    confidence = np.array([0.7, 0.71, 1.0, 0.0])
    correct = np.array([True, False, True, False])
    bins = reliability_bins(confidence, correct, bins=10)
    assert (bins[6]["count"], bins[7]["count"], bins[9]["count"], bins[0]["count"]) == (1, 1, 1, 1)
    # gaps: |1-0.7|, |0-0.71|, |1-1|, |0-0| each weighted 1/4
    assert expected_calibration_error(confidence, correct, bins=10) == pytest.approx(
        (0.3 + 0.71) / 4
    )
    # a perfectly calibrated set has no error
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == 0.0


def test_nll_and_brier_by_hand() -> None:
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 0])
    assert negative_log_likelihood(np.log(probs), labels) == pytest.approx(
        -(math.log(0.8) + math.log(0.4)) / 2
    )
    assert brier_score(probs, labels) == pytest.approx(((0.04 + 0.04) + (0.36 + 0.36)) / 2)


def test_log_softmax_with_temperature_is_shift_invariant() -> None:
    logits = np.array([[2.0, 0.0, -1.0]])
    scaled = np.exp(log_softmax(logits + 5.0, 2.0))
    expected = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum()
    assert scaled == pytest.approx(expected)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t: float) -> None:
    """Labels drawn from softmax(z / T): the NLL fit on z finds T again, from logits or from
    log-probabilities (what the runs store) alike."""
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(20000, 3)) * 3.0
    probs = np.exp(log_softmax(logits, true_t))
    labels = np.minimum((rng.random((len(probs), 1)) > probs.cumsum(axis=1)).sum(axis=1), 2)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert fit_temperature(log_softmax(logits), labels) == pytest.approx(fitted, rel=1e-4)


def test_calibrate_reports_before_and_after_and_fixes_overconfidence() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4000, 2)) * 4.0
    labels = (rng.random(4000) > np.exp(log_softmax(logits, 3.0))[:, 0]).astype(int)
    out = calibrate(logits[2000:], labels[2000:], logits[:2000], labels[:2000])
    assert out["bins"] == 15 and "15 equal-width" in out["binning"]
    t = out["temperature"]
    assert t["T"] == pytest.approx(3.0, rel=0.15) and t["dev_examples"] == 2000
    assert t["dev_nll_after"] < t["dev_nll_before"]
    assert out["test_scaled"]["ece"] < out["test"]["ece"]
    assert out["test_scaled"]["nll"] < out["test"]["nll"]
    assert out["test_scaled"]["accuracy"] == out["test"]["accuracy"]  # argmax unchanged
    assert out["note"] is None


def test_calibrate_without_dev_predictions_says_why() -> None:
    logits = np.log(np.array([[0.9, 0.1], [0.3, 0.7]]))
    out = calibrate(logits, np.array([0, 0]), None, None)
    assert out["temperature"] is None and out["test_scaled"] is None
    assert "no dev predictions" in out["note"]
    assert out["test"]["accuracy"] == 0.5
