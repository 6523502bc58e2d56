"""Single examples worth reading: the most confident mistakes, and where two models disagree."""

from __future__ import annotations

from typing import Any

import numpy as np

from training.analysis.runs import RunPredictions
from training.compare import mcnemar


def _tokens(lengths: list[int] | None, i: int, max_length: int) -> dict[str, Any]:
    if lengths is None:
        return {"tokens": None, "truncated": None}
    return {"tokens": lengths[i], "truncated": lengths[i] > max_length}


def confident_mistakes(
    run: RunPredictions, top: int, lengths: list[int] | None
) -> list[dict[str, Any]]:
    """The ``top`` wrong predictions with the highest confidence, most confident first."""
    names, probs, preds = run.label_names(), run.probs, run.preds
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(~run.correct)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:top]
    return [
        {
            "index": int(i),
            "text": run.texts[i],
            "label": names[run.labels[i]],
            "pred": names[preds[i]],
            "confidence": float(confidence[i]),
            "p_label": float(probs[i, run.labels[i]]),
            **_tokens(lengths, int(i), run.details.model.max_length),
        }
        for i in order
    ]


def disagreement_cells(run: RunPredictions, baseline: RunPredictions) -> dict[str, int]:
    """The 2x2 table of paired outcomes on the same test examples."""
    a, b = run.correct, baseline.correct
    return {
        "both_right": int((a & b).sum()),
        "only_run_right": int((a & ~b).sum()),
        "only_baseline_right": int((~a & b).sum()),
        "both_wrong": int((~a & ~b).sum()),
    }


def disagreements(
    run: RunPredictions, baseline: RunPredictions, samples: int, lengths: list[int] | None
) -> dict[str, Any]:
    """Who was right where the two disagree: cells, McNemar's exact test, and samples of each
    discordant cell (largest gap in the probability of the true label first)."""
    names, rows = run.label_names(), np.arange(len(run.labels))
    p_run = run.probs[rows, run.labels]
    p_base = baseline.probs[rows, run.labels]
    test = mcnemar(baseline.correct.tolist(), run.correct.tolist())  # A: baseline, B: run

    def sample(mask: np.ndarray) -> list[dict[str, Any]]:
        chosen = np.flatnonzero(mask)
        chosen = chosen[np.argsort(-np.abs(p_run - p_base)[chosen], kind="stable")][:samples]
        return [
            {
                "index": int(i),
                "text": run.texts[i],
                "label": names[run.labels[i]],
                "run_pred": names[run.preds[i]],
                "baseline_pred": names[baseline.preds[i]],
                "run_p_label": float(p_run[i]),
                "baseline_p_label": float(p_base[i]),
                **_tokens(lengths, int(i), run.details.model.max_length),
            }
            for i in chosen
        ]

    disagree = run.preds != baseline.preds
    return {
        "baseline_run_id": baseline.run_id,
        "baseline_method": baseline.details.method,
        "baseline_accuracy": float(baseline.correct.mean()),
        "run_accuracy": float(run.correct.mean()),
        "cells": disagreement_cells(run, baseline),
        "predictions_differ": int(disagree.sum()),
        "mcnemar": {
            "only_run_right": test["only_b_correct"],
            "only_baseline_right": test["only_a_correct"],
            "p_value": test["p_value"],
            "method": test["method"],
        },
        "samples": {
            "only_run_right": sample(run.correct & ~baseline.correct),
            "only_baseline_right": sample(~run.correct & baseline.correct),
        },
    }
