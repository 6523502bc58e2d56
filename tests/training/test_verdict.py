"""Is fine-tuning worth it: the bootstrap deltas against direct figures, and the words."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import classification_metrics
from training.verdict import delta_intervals, verdict


def _labels_and_preds(seed: int = 0) -> tuple[list[int], list[int], list[int]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 300)
    a = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 3, 300))
    b = np.where(rng.random(300) < 0.85, labels, rng.integers(0, 3, 300))
    return labels.tolist(), a.tolist(), b.tolist()


def test_deltas_are_the_direct_differences_inside_their_intervals() -> None:
    labels, a, b = _labels_and_preds()
    names = ["x", "y", "z"]
    deltas = delta_intervals(labels, a, b, names, resamples=500)
    ma = classification_metrics(labels, a, dict(enumerate(names)))
    mb = classification_metrics(labels, b, dict(enumerate(names)))
    assert deltas["accuracy"]["delta"] == pytest.approx(mb["accuracy"] - ma["accuracy"])
    for name in names:
        for figure in ("recall", "f1"):
            d = deltas[f"{figure}[{name}]"]
            want = mb["per_class"][name][figure] - ma["per_class"][name][figure]
            assert d["delta"] == pytest.approx(want)
            assert d["ci_low"] <= d["delta"] <= d["ci_high"]
            assert d["ci_high"] - d["ci_low"] > 0.01  # 300 examples leave real uncertainty
    assert deltas == delta_intervals(labels, a, b, names, resamples=500)  # seeded


def test_identical_predictions_have_a_zero_interval() -> None:
    labels, a, _ = _labels_and_preds(1)
    deltas = delta_intervals(labels, a, a, ["x", "y", "z"], resamples=200)
    assert all(d == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0} for d in deltas.values())


def _result(p: float, delta: float, latency_ratio: float | None) -> dict:
    interval = {"delta": delta, "ci_low": delta - 0.02, "ci_high": delta + 0.02}
    table = [
        {"key": "training_seconds", "ratio": 3.0},
        {"key": "trained_mb", "ratio": 200.0},
        {"key": "batch1_p50_ms", "ratio": latency_ratio},
    ]
    return {
        "a": {"run_id": "d-head", "method": "head"},
        "b": {"run_id": "d-lora", "method": "lora"},
        "alpha": 0.05,
        "mcnemar": {"p_value": p},
        "deltas": {
            "accuracy": interval,
            "f1[neg]": interval,
            "f1[pos]": {**interval, "delta": 0.05},
        },
        "costs": {"table": table},
    }


def test_a_significant_gain_says_so_with_its_numbers() -> None:
    text = verdict(_result(0.002, 0.034, 2.1))
    assert text.startswith("lora (d-lora) beats the head baseline (d-head): +3.4 points")
    assert "points accuracy (95% CI +1.4 to +5.4), p = 0.002 (McNemar exact, alpha 0.05)" in text
    assert "neg +3.4, pos +5.0" in text
    assert "3.00x the training time" in text and "200x the trained weights" in text
    assert "Worth it if its 2.10x latency fits your budget" in text
    assert "not significant" not in text


def test_no_significance_is_said_honestly() -> None:
    text = verdict(_result(0.31, 0.008, None))
    assert "does not beat the head baseline (d-head) significantly" in text
    assert "p = 0.31" in text and "not significant" in text
    assert "latency n/a" in text and "not shown to be worth its cost" in text
    assert "Worth it if" not in text


def test_a_significant_loss_is_not_worth_it() -> None:
    text = verdict(_result(0.01, -0.04, 0.5))
    assert "is significantly worse than the head baseline" in text and "-4.0 points" in text
    assert "Not worth it: keep the head baseline (d-head)." in text
