"""Baseline vs tuned: every metric with its change, McNemar's test, the costs and the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training import footprint, verdict
from tuneserve.details import TrainDetails
from tuneserve.errors import ConfigError, DataError, ManifestError
from tuneserve.manifest import Manifest, read_manifest

PREDICTIONS_ROLE = "test_predictions"
METRICS_ROLE = "metrics"


def mcnemar(a_correct: list[bool], b_correct: list[bool]) -> dict[str, Any]:
    """McNemar's test on paired outcomes: exact binomial p, and chi-square with correction."""
    from scipy import stats

    b = sum(x and not y for x, y in zip(a_correct, b_correct, strict=True))  # only A right
    c = sum(y and not x for x, y in zip(a_correct, b_correct, strict=True))  # only B right
    n = b + c
    exact = float(stats.binomtest(b, n, 0.5).pvalue) if n else 1.0
    chi2 = (abs(b - c) - 1) ** 2 / n if n else 0.0
    return {
        "only_a_correct": b,
        "only_b_correct": c,
        "discordant": n,
        "p_value": exact,
        "method": "exact binomial (two-sided)",
        "chi2_corrected": chi2,
        "p_value_chi2": float(stats.chi2.sf(chi2, 1)) if n else 1.0,
    }


def _load(run_dir: Path) -> tuple[Manifest, TrainDetails, dict[str, Any], list[dict[str, Any]]]:
    manifest = read_manifest(run_dir, stage="train")
    for role in (METRICS_ROLE, PREDICTIONS_ROLE):
        if role not in manifest.artifacts:
            raise ManifestError(f"{run_dir} has no {role} artifact: it is not a complete train run")
    metrics = json.loads((run_dir / manifest.artifacts[METRICS_ROLE].path).read_text())
    with open(run_dir / manifest.artifacts[PREDICTIONS_ROLE].path, encoding="utf-8") as handle:
        predictions = [json.loads(line) for line in handle if line.strip()]
    return manifest, manifest.details_as(TrainDetails), metrics, predictions


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    flat = {k: v for k, v in metrics.items() if isinstance(v, float)}
    for label, figures in metrics.get("per_class", {}).items():
        for name in ("precision", "recall", "f1"):
            flat[f"{name}[{label}]"] = figures[name]
    return flat


def compare_runs(
    run_a: Path,
    run_b: Path,
    *,
    alpha: float = 0.05,
    exports: tuple[Path | None, Path | None] = (None, None),
    benches: tuple[Path | None, Path | None] = (None, None),
) -> dict[str, Any]:
    """Compare two train runs evaluated on the same test split (A: baseline, B: tuned): the
    metrics, McNemar's test at ``alpha``, bootstrap intervals of the deltas, the costs (with the
    export runs and bench-model reports when given) and the verdict in words."""
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must be between 0 and 1, got {alpha}")
    man_a, det_a, met_a, pred_a = _load(run_a)
    man_b, det_b, met_b, pred_b = _load(run_b)
    id_a, id_b = man_a.run_id, man_b.run_id
    if det_a.test_fingerprint != det_b.test_fingerprint or len(pred_a) != len(pred_b):
        raise DataError(
            f"{run_a} and {run_b} were evaluated on different test splits: "
            "compare runs made from the same data and test subset"
        )
    scal_a, scal_b = _scalar_metrics(met_a["test"]), _scalar_metrics(met_b["test"])
    rows = []
    for name in scal_a:
        if name not in scal_b:
            continue
        a, b = scal_a[name], scal_b[name]
        rows.append(
            {
                "metric": name,
                "a": a,
                "b": b,
                "abs_change": b - a,
                "rel_change": (b - a) / a if a else None,
            }
        )
    test = mcnemar(
        [p["pred"] == p["label"] for p in pred_a], [p["pred"] == p["label"] for p in pred_b]
    )
    labels = [p["label"] for p in pred_a]
    names = [det_a.id2label[str(i)] for i in range(len(det_a.id2label))]
    cost_a = footprint.run_costs(man_a, met_a, exports[0], benches[0])
    cost_b = footprint.run_costs(man_b, met_b, exports[1], benches[1])
    result = {
        "a": {"run": str(run_a), "run_id": id_a, "method": det_a.method},
        "b": {"run": str(run_b), "run_id": id_b, "method": det_b.method},
        "test_examples": len(pred_a),
        "metrics": rows,
        "mcnemar": test,
        "alpha": alpha,
        "significant": test["p_value"] < alpha,
        "deltas": verdict.delta_intervals(
            labels, [p["pred"] for p in pred_a], [p["pred"] for p in pred_b], names
        ),
        "ci_method": verdict.CI_METHOD,
        "costs": {"a": cost_a, "b": cost_b, "table": footprint.cost_table(cost_a, cost_b)},
    }
    result["verdict"] = verdict.verdict(result)
    return result


def _value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3g}"


def worth_lines(result: dict[str, Any]) -> list[str]:
    """The verdict, the per-class deltas with their intervals, and the cost table (Markdown)."""
    a, b, deltas = result["a"], result["b"], result["deltas"]
    lines = [
        "",
        "### Is fine-tuning worth it?",
        "",
        result["verdict"],
        "",
        f"Changes of {b['method']} over {a['method']} in points, with 95% intervals from a "
        f"{result['ci_method']}:",
        "",
        "| figure | change | 95% CI |",
        "|---|---:|---:|",
    ]
    for name, d in deltas.items():
        lines.append(
            f"| {name} | {100 * d['delta']:+.1f} | "
            f"{100 * d['ci_low']:+.1f} to {100 * d['ci_high']:+.1f} |"
        )
    lines += [
        "",
        f"| cost | {a['method']} | {b['method']} | {b['method']} / {a['method']} |",
        "|---|---:|---:|---:|",
    ]
    for row in result["costs"]["table"]:
        unit = f" ({row['unit']})" if row["unit"] else ""
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:,.2f}x"
        lines.append(f"| {row['what']}{unit} | {_value(row['a'])} | {_value(row['b'])} | {ratio} |")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table plus McNemar's verdict."""
    a, b, m = result["a"], result["b"], result["mcnemar"]
    lines = [
        f"## {a['run_id']} ({a['method']}) vs {b['run_id']} ({b['method']})",
        "",
        f"Test split: {result['test_examples']} examples.",
        "",
        f"| metric | {a['method']} | {b['method']} | change | relative |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["metrics"]:
        rel = "n/a" if row["rel_change"] is None else f"{row['rel_change']:+.1%}"
        lines.append(
            f"| {row['metric']} | {row['a']:.4f} | {row['b']:.4f} | "
            f"{row['abs_change']:+.4f} | {rel} |"
        )
    lines += [
        "",
        f"McNemar's test: {m['only_a_correct']} examples only {a['method']} got right, "
        f"{m['only_b_correct']} only {b['method']} got right; p = {m['p_value']:.3g} "
        f"({m['method']}; chi-square with continuity correction p = "
        f"{m['p_value_chi2']:.3g}).",
        *worth_lines(result),
    ]
    return "\n".join(lines) + "\n"
