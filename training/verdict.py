"""Is the tuned model worth it: paired bootstrap intervals of the deltas, and the words."""

from __future__ import annotations

from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
CI_METHOD = f"paired bootstrap over the test examples ({RESAMPLES} resamples, 95% percentile)"


def _per_class(labels: np.ndarray, preds: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and F1 of class ``c`` in each resample (rows of ``labels`` / ``preds``)."""
    true, pred = labels == c, preds == c
    tp = (true & pred).sum(axis=-1).astype(float)
    support, predicted = true.sum(axis=-1), pred.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    return recall, f1


def delta_intervals(
    labels: list[int],
    pred_a: list[int],
    pred_b: list[int],
    label_names: list[str],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """B minus A for accuracy and each class's recall and F1: the point value and a paired
    bootstrap percentile interval (the same resampled examples for both models)."""
    y, a, b = (np.asarray(x) for x in (labels, pred_a, pred_b))
    idx = np.random.default_rng(seed).integers(0, len(y), size=(resamples, len(y)))
    ys, as_, bs = y[idx], a[idx], b[idx]
    tail = (1 - LEVEL) / 2 * 100

    def interval(point: float, samples: np.ndarray) -> dict[str, float]:
        lo, hi = np.percentile(samples, [tail, 100 - tail])
        return {"delta": float(point), "ci_low": float(lo), "ci_high": float(hi)}

    out = {
        "accuracy": interval(
            float((b == y).mean() - (a == y).mean()),
            (bs == ys).mean(axis=1) - (as_ == ys).mean(axis=1),
        )
    }
    for c, name in enumerate(label_names):
        (ra, fa), (rb, fb) = _per_class(y, a, c), _per_class(y, b, c)
        (sra, sfa), (srb, sfb) = _per_class(ys, as_, c), _per_class(ys, bs, c)
        out[f"recall[{name}]"] = interval(float(rb - ra), srb - sra)
        out[f"f1[{name}]"] = interval(float(fb - fa), sfb - sfa)
    return out


def _points(d: dict[str, float], figure: str) -> str:
    return (
        f"{100 * d['delta']:+.1f} points {figure} (95% CI {100 * d['ci_low']:+.1f} to "
        f"{100 * d['ci_high']:+.1f})"
    )


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"


def _ratio(rows: list[dict[str, Any]], key: str) -> float | None:
    return next((r["ratio"] for r in rows if r["key"] == key), None)


def verdict(result: dict[str, Any]) -> str:
    """The plain-words answer, built from the numbers of a comparison."""
    a, b, test = result["a"], result["b"], result["mcnemar"]
    alpha, deltas = result["alpha"], result["deltas"]
    acc = deltas["accuracy"]
    base, tuned = f"the {a['method']} baseline ({a['run_id']})", f"{b['method']} ({b['run_id']})"
    evidence = f"p = {test['p_value']:.3g} (McNemar exact, alpha {alpha:g})"
    significant = test["p_value"] < alpha
    if significant and acc["delta"] > 0:
        head = f"{tuned} beats {base}: {_points(acc, 'accuracy')}, {evidence}."
    elif significant:
        head = (
            f"{tuned} is significantly worse than {base}: {_points(acc, 'accuracy')}, {evidence}."
        )
    else:
        head = (
            f"{tuned} does not beat {base} significantly: {_points(acc, 'accuracy')}, {evidence}: "
            "not significant."
        )
    names = [k[3:-1] for k in deltas if k.startswith("f1[")]
    shown = ", ".join(f"{n} {100 * deltas[f'f1[{n}]']['delta']:+.1f}" for n in names[:8])
    per_class = f" Per class, F1 change in points: {shown}{' ...' if len(names) > 8 else ''}."
    rows = result["costs"]["table"]
    latency_x = _ratio(rows, "batch1_p50_ms")
    costs = [
        f"{_times(ratio)} {what}"
        for key, what in (
            ("training_seconds", "the training time"),
            ("trained_mb", "the trained weights on disk"),
            ("serving_mb", "the serving model on disk"),
        )
        if (ratio := _ratio(rows, key)) is not None
    ]
    costs.append(
        "latency n/a (pass --export-a/--export-b, benchmarked with bench-model)"
        if latency_x is None
        else f"{_times(latency_x)} the batch-1 p50 latency"
    )
    cost = f" Against the baseline it takes {', '.join(costs)}."
    if significant and acc["delta"] > 0:
        end = (
            f" Worth it if its {_times(latency_x)} latency fits your budget."
            if latency_x is not None
            else " Worth it if its serving cost fits your budget (latency not measured)."
        )
    elif significant:
        end = f" Not worth it: keep {base}."
    else:
        end = (
            f" On this test set fine-tuning is not shown to be worth its cost: keep {base}, or "
            "measure on more labelled data (the interval says which effects remain possible)."
        )
    return head + per_class + cost + end
