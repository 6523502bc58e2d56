"""Accuracy on slices of the test split: token-length buckets, truncated or not, true label."""

from __future__ import annotations

from typing import Any

import numpy as np

from training.analysis.runs import RunPredictions


def _row(name: str, members: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    count = int(members.sum())
    return {
        "slice": name,
        "count": count,
        "errors": int((members & ~correct).sum()),
        "accuracy": float(correct[members].mean()) if count else None,
    }


def length_edges(lengths: np.ndarray, buckets: int) -> list[int]:
    """Inclusive upper token counts of up to ``buckets`` quantile buckets (ties merge them)."""
    quantiles = np.quantile(lengths, np.linspace(0, 1, buckets + 1)[1:], method="higher")
    return sorted({int(q) for q in quantiles})


def slice_accuracy(
    run: RunPredictions, lengths: list[int] | None, buckets: int
) -> dict[str, list[dict[str, Any]]]:
    """Accuracy and counts per slice; the length slices need the token lengths."""
    correct = run.correct
    names = run.label_names()
    out: dict[str, list[dict[str, Any]]] = {
        "label": [_row(f"label = {n}", run.labels == i, correct) for i, n in enumerate(names)],
        "length": [],
        "truncation": [],
    }
    if lengths is None or not len(correct):
        return out
    counts = np.asarray(lengths)
    low = 0
    for high in length_edges(counts, buckets):
        members = (counts > low) & (counts <= high)
        out["length"].append(_row(f"{low + 1}-{high} tokens", members, correct))
        low = high
    max_length = run.details.model.max_length
    out["truncation"] = [
        _row(f"<= {max_length} tokens (whole text read)", counts <= max_length, correct),
        _row(f"> {max_length} tokens (truncated)", counts > max_length, correct),
    ]
    return out
