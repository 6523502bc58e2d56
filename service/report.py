"""The A/B report: per variant traffic, online accuracy, latency; each challenger against the
control with the fixed-horizon and the always-valid test; the sample-ratio check; a verdict.

Built from the store alone, so `GET /ab/report` and `tuneserve ab-report --db PATH` agree.
Forced traffic is left out of every figure but the forced count.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from service.config import ServingConfig
from service.stats import (
    always_valid_p_values,
    sample_ratio_check,
    samples_needed,
    two_proportion_test,
    wilson_interval,
)
from service.store import Store


def build_report(store: Store, settings: ServingConfig) -> dict[str, Any]:
    """The report as JSON-ready data."""
    shares = _shares(settings)
    control = settings.control.name
    rows = store.served()
    labelled = store.labelled()
    traffic: Counter[str] = Counter()
    forced: Counter[str] = Counter()
    latency: dict[str, list[float]] = defaultdict(list)
    for variant, was_forced, latency_ms in rows:
        if was_forced:
            forced[variant] += 1
        else:
            traffic[variant] += 1
            latency[variant].append(float(latency_ms))
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for variant, _, correct, _ in labelled:
        outcomes[variant].append(correct)
    variants = []
    for name in settings.variant_names():
        n, hits = len(outcomes[name]), sum(outcomes[name])
        low, high = wilson_interval(hits, n)
        lat = np.array(latency[name]) if latency[name] else None
        variants.append({
            "variant": name,
            "control": name == control,
            "share": shares[name],
            "traffic": traffic[name],
            "forced": forced[name],
            "labelled": n,
            "accuracy": hits / n if n else None,
            "accuracy_ci95": [low, high],
            "latency_ms": None if lat is None else {
                f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)
            },
        })  # fmt: skip
    srm = sample_ratio_check(dict(traffic), shares)
    experiment = settings.experiment
    comparisons = [
        _compare(control, name, labelled, experiment.alpha, experiment.minimum_effect,
                 experiment.power, experiment.msprt_tau)
        for name in settings.variant_names() if name != control
    ]  # fmt: skip
    return {
        "salt": experiment.salt,
        "control": control,
        "variants": variants,
        "comparisons": comparisons,
        "sample_ratio": {
            "chi2": srm.chi2,
            "p_value": srm.p_value,
            "alpha": 0.001,
            "mismatch": srm.mismatch,
            "warning": "SAMPLE RATIO MISMATCH: the observed split differs from the configured "
            "weights; do not trust the comparison until the cause is found"
            if srm.mismatch
            else None,
        },
    }


def _shares(settings: ServingConfig) -> dict[str, float]:
    total = sum(v.weight for v in settings.variants)
    return {v.name: v.weight / total for v in settings.variants}


def _compare(
    control: str,
    challenger: str,
    labelled: list[tuple[str, float, bool, float]],
    alpha: float,
    minimum_effect: float,
    power: float,
    tau: float,
) -> dict[str, Any]:
    s_a = n_a = s_b = n_b = 0
    checkpoints = []
    for variant, _, correct, _ in labelled:  # oldest first: the always-valid p-value's path
        if variant == control:
            n_a, s_a = n_a + 1, s_a + int(correct)
        elif variant == challenger:
            n_b, s_b = n_b + 1, s_b + int(correct)
        else:
            continue
        checkpoints.append((s_a, n_a, s_b, n_b))
    test = two_proportion_test(s_a, n_a, s_b, n_b, confidence=1 - alpha)
    sequential = always_valid_p_values(checkpoints, tau)[-1] if checkpoints else 1.0
    base_rate = s_a / n_a if n_a else 0.5
    needed = samples_needed(base_rate, minimum_effect, alpha, power)
    result = {
        "challenger": challenger,
        "labelled": {"control": n_a, "challenger": n_b},
        "difference": test.difference,
        "difference_ci": [test.ci_low, test.ci_high],
        "z": test.z,
        "p_value": test.p_value,
        "always_valid_p_value": sequential,
        "minimum_effect": minimum_effect,
        "samples_needed_per_arm": needed,
    }
    result["verdict"] = verdict(challenger, control, result, alpha)
    return result


def verdict(challenger: str, control: str, result: dict[str, Any], alpha: float) -> str:
    """One plain-words line."""
    diff, (low, high) = result["difference"] * 100, (x * 100 for x in result["difference_ci"])
    p, p_seq = result["p_value"], result["always_valid_p_value"]
    counts = result["labelled"]
    if p_seq <= alpha or (p <= alpha and min(counts.values()) >= result["samples_needed_per_arm"]):
        better = "better" if diff > 0 else "worse"
        return (
            f"{challenger} {better} than {control} by {abs(diff):.1f} points "
            f"[{low:.1f}, {high:.1f}], p = {p:.2g} (always-valid p = {p_seq:.2g})"
        )
    needed = result["samples_needed_per_arm"]
    if min(counts.values()) < needed:
        return (
            f"not enough data: about {needed:,} labelled predictions per arm needed to detect "
            f"{result['minimum_effect'] * 100:.1f} points (have {counts['control']:,} and "
            f"{counts['challenger']:,})"
        )
    return (
        f"no significant difference between {challenger} and {control}: {diff:+.1f} points "
        f"[{low:.1f}, {high:.1f}], p = {p:.2g}"
    )


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table and verdict lines."""
    lines = [
        f"A/B report (salt {report['salt']}, control {report['control']})",
        f"{'variant':<12}{'share':>7}{'traffic':>9}{'forced':>8}{'labelled':>10}"
        f"{'accuracy':>10}{'95% CI':>18}{'p50 ms':>8}{'p99 ms':>8}",
    ]
    for v in report["variants"]:
        acc = f"{v['accuracy']:.3f}" if v["accuracy"] is not None else "-"
        ci = "[{:.3f}, {:.3f}]".format(*v["accuracy_ci95"]) if v["labelled"] else "-"
        lat = v["latency_ms"] or {}
        p50 = f"{lat['p50']:.1f}" if lat else "-"
        p99 = f"{lat['p99']:.1f}" if lat else "-"
        lines.append(
            f"{v['variant']:<12}{v['share']:>7.2f}{v['traffic']:>9}{v['forced']:>8}"
            f"{v['labelled']:>10}{acc:>10}{ci:>18}{p50:>8}{p99:>8}"
        )
    srm = report["sample_ratio"]
    lines.append(f"sample ratio: chi2 {srm['chi2']:.2f}, p = {srm['p_value']:.3g}")
    if srm["warning"]:
        lines.append("!!! " + srm["warning"])
    lines += [f"verdict: {c['verdict']}" for c in report["comparisons"]]
    return "\n".join(lines)
