"""Classification metrics from label and prediction ids (no scikit-learn needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_labels: int) -> np.ndarray:
    """Rows: true label; columns: predicted label."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(preds)), 1)
    return matrix


def classification_metrics(
    labels: Sequence[int], preds: Sequence[int], id2label: Mapping[int, str]
) -> dict[str, Any]:
    """Accuracy, macro and weighted precision/recall/F1, per-class figures, confusion matrix."""
    n = len(id2label)
    matrix = confusion_matrix(labels, preds, n)
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    weights = support / support.sum() if support.sum() else support
    per_class = {
        id2label[i]: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in range(n)
    }
    return {
        "accuracy": float(tp.sum() / max(1, matrix.sum())),
        "f1_macro": float(f1.mean()),
        "f1_weighted": float((f1 * weights).sum()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "examples": int(matrix.sum()),
        "per_class": per_class,
        "confusion_matrix": {"labels": [id2label[i] for i in range(n)], "matrix": matrix.tolist()},
    }


def headline(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics only (what the dev evaluations and the manifest carry)."""
    return {k: v for k, v in metrics.items() if isinstance(v, float)}
