"""Calibration: expected calibration error, reliability bins, NLL, Brier, temperature scaling."""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15
BINNING = "equal-width bins of the top-label confidence over [0, 1], (lower, upper]"
T_BOUNDS = (0.05, 20.0)  # temperatures searched (log-uniformly)


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise log-softmax of ``logits / temperature`` (log-probabilities are logits too)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Per equal-width bin (lower, upper]: count, mean confidence, accuracy (empty bins too)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over the bins (Guo et al., 2017)."""
    total = len(confidence)
    if not total:
        return 0.0
    return float(
        sum(
            r["count"] / total * abs(r["accuracy"] - r["confidence"])
            for r in reliability_bins(confidence, correct, bins)
            if r["count"]
        )
    )


def max_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """MCE: the largest |accuracy - confidence| of a non-empty bin."""
    gaps = [
        abs(r["accuracy"] - r["confidence"])
        for r in reliability_bins(confidence, correct, bins)
        if r["count"]
    ]
    return float(max(gaps, default=0.0))


def negative_log_likelihood(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true label)."""
    labels = np.asarray(labels, dtype=int)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over examples of the squared distance between the probabilities and the one-hot."""
    onehot = np.eye(probs.shape[1])[np.asarray(labels, dtype=int)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) (1-D, bounded, in log T)."""
    from scipy.optimize import minimize_scalar

    def loss(log_t: float) -> float:
        return negative_log_likelihood(log_softmax(logits, float(np.exp(log_t))), labels)

    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    found = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(found.x))


def calibration_figures(
    log_probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> dict[str, Any]:
    """ECE, MCE, NLL, Brier and the reliability bins of one set of predictions."""
    probs = np.exp(log_probs)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    return {
        "ece": expected_calibration_error(confidence, correct, bins),
        "mce": max_calibration_error(confidence, correct, bins),
        "nll": negative_log_likelihood(log_probs, labels),
        "brier": brier_score(probs, labels),
        "mean_confidence": float(confidence.mean()) if len(confidence) else 0.0,
        "accuracy": float(correct.mean()) if len(correct) else 0.0,
        "reliability": reliability_bins(confidence, correct, bins),
    }


def calibrate(
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    dev_logits: np.ndarray | None,
    dev_labels: np.ndarray | None,
    bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Calibration on test as trained, and after temperature scaling fitted on dev."""
    out: dict[str, Any] = {
        "bins": bins,
        "binning": f"{bins} {BINNING}",
        "test": calibration_figures(log_softmax(test_logits), test_labels, bins),
        "temperature": None,
        "test_scaled": None,
        "note": None,
    }
    if dev_logits is None or dev_labels is None or not len(dev_labels):
        out["note"] = (
            "temperature scaling not fitted: the run stores no dev predictions "
            "(dev_predictions.jsonl); train it again with this tuneserve"
        )
        return out
    t = fit_temperature(dev_logits, dev_labels)
    out["temperature"] = {
        "fitted_on": "dev",
        "dev_examples": len(dev_labels),
        "method": f"1-D NLL minimisation over log T, T in [{T_BOUNDS[0]}, {T_BOUNDS[1]}]",
        "T": t,
        "dev_nll_before": negative_log_likelihood(log_softmax(dev_logits), dev_labels),
        "dev_nll_after": negative_log_likelihood(log_softmax(dev_logits, t), dev_labels),
    }
    out["test_scaled"] = calibration_figures(log_softmax(test_logits, t), test_labels, bins)
    if min(abs(np.log(t / bound)) for bound in T_BOUNDS) < 1e-3:
        out["note"] = f"the fitted temperature {t:.3g} is at the edge of the search range"
    return out
