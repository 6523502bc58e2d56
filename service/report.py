"""The A/B report: per variant traffic, errors, online accuracy, latency; each challenger against
the control with the fixed-horizon and the always-valid test; the sample-ratio check; shadow
agreement with McNemar's test; guardrail trips; accuracy over time; a verdict.

Built from the store alone, so `GET /ab/report` and `tuneserve ab-report --db PATH` agree.
It covers the current experiment (the routing salt in force). Forced traffic, and traffic
outside the experiment's coverage, is left out of every figure but
its own count. The sample ratio is judged on the traffic since the last change of the experiment
state (weights, disabled variants), against the shares in force. Latency percentiles are nearest
rank (tuneserve.percentiles), of the answered requests.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from service.config import ServingConfig
from service.experiment.judge import format_rollout, rollout_status
from service.experiment.state import ExperimentState, read_state
from service.schema import Labelled, VariantSummary
from service.stats import (
    SRM_ALPHA,
    mcnemar_exact,
    path_end,
    sample_ratio_check,
    samples_needed,
    two_proportion_test,
    wilson_interval,
)
from service.store import Store

TIMELINE_POINTS = 60  # points per variant on the accuracy-over-time chart
LATENCY_QS = (50, 95, 99)  # the latency percentiles reported (nearest rank: tuneserve.percentiles)


def build_report(store: Store, settings: ServingConfig) -> dict[str, Any]:
    """The report as JSON-ready data.

    Five reads of the store, whatever its size: the experiment state, its history, per variant
    the counts and latency percentiles (one grouped query; SQLite, without percentile_disc,
    reads the answered latencies in a sixth), the labelled predictions in feedback order (the
    always-valid test and the timeline walk them), and the shadow counts; and the rollout
    plan's status (service/experiment/judge.py: its events and its challenger's path)."""
    state = read_state(store, settings)
    control = state.control_of(settings)
    history = store.history()
    since = history[-1].ts if history else 0.0  # the split is judged under the current state
    shares = _shares(state)
    counts = {row.variant: row for row in store.variant_summary(since, state.salt, LATENCY_QS)}
    labelled = store.labelled(salt=state.salt)
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for row in labelled:
        outcomes[row.variant].append(row.correct)
    no_rows = VariantSummary("", 0, 0, 0, 0, 0, {})  # a variant that has logged nothing yet
    variants = []
    for name in settings.variant_names():
        n, hits = len(outcomes[name]), sum(outcomes[name])
        low, high = wilson_interval(hits, n)
        c = counts.get(name, no_rows)
        variants.append({
            "variant": name,
            "control": name == control,
            "share": shares.get(name, 0.0),  # 0: served, not in the state yet
            "enabled": name not in state.disabled,
            "traffic": c.traffic,
            "forced": c.forced,
            "excluded": c.excluded,
            "errors": c.errors,
            "error_rate": c.errors / c.traffic if c.traffic else None,
            "labelled": n,
            "accuracy": hits / n if n else None,
            "accuracy_ci95": [low, high],
            "latency_ms": {f"p{q}": c.latency_ms[q] for q in LATENCY_QS} if c.latency_ms else None,
        })  # fmt: skip
    current = {name: row.current for name, row in counts.items()}
    srm = sample_ratio_check(current, shares)
    experiment = settings.experiment
    comparisons = [
        _compare(control, name, labelled, experiment.alpha, experiment.minimum_effect,
                 experiment.power, experiment.msprt_tau)
        for name in settings.variant_names() if name != control
    ]  # fmt: skip
    return {
        "salt": state.salt,
        "control": control,
        "coverage": state.coverage,
        "variants": variants,
        "comparisons": comparisons,
        "sample_ratio": {
            "since": since,
            "chi2": srm.chi2,
            "p_value": srm.p_value,
            "alpha": SRM_ALPHA,
            "mismatch": srm.mismatch,
            "warning": "SAMPLE RATIO MISMATCH: the observed split differs from the configured "
            "weights; do not trust the comparison until the cause is found"
            if srm.mismatch
            else None,
        },
        "shadow": _shadow(store),
        "guardrail_trips": [
            {
                "ts": ts,
                "variant": change.get("variant"),
                "kind": change.get("kind"),
                "detail": change.get("detail", {}),
            }
            for ts, change in history
            if change.get("by") == "guardrail"
        ],
        "timeline": _timeline(labelled, settings.variant_names()),
        "rollout": rollout_status(store, settings, state=state, history=history),
    }


def _shares(state: ExperimentState) -> dict[str, float]:
    weights = state.effective_weights()
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def _shadow(store: Store) -> list[dict[str, Any]]:
    """Per shadow variant: agreement with the live answers, and McNemar's test on the pairs
    whose true label is known (live right and shadow wrong, or the other way round)."""
    result = []
    for c in sorted(store.shadow_counts()):
        test = mcnemar_exact(c.live_only, c.shadow_only)
        result.append({
            "variant": c.variant,
            "scored": c.scored,
            "agreement": c.agree / c.scored,
            "labelled": c.labelled,
            "live_accuracy": c.live_right / c.labelled if c.labelled else None,
            "shadow_accuracy": c.shadow_right / c.labelled if c.labelled else None,
            "mcnemar": {"live_only": test.only_a, "shadow_only": test.only_b,
                        "p_value": test.p_value},
        })  # fmt: skip
    return result


def _timeline(labelled: list[Labelled], names: list[str]) -> dict[str, list[list[float]]]:
    """Per variant, cumulative online accuracy over time: ``[ts, n, accuracy, low, high]``
    (Wilson 95%) at up to TIMELINE_POINTS evenly spaced labelled counts."""
    series: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for row in sorted(labelled, key=lambda row: row.ts):  # by time answered
        series[row.variant].append((row.ts, row.correct))
    timeline = {}
    for name in names:
        rows = series.get(name, [])
        points, hits = [], 0
        step = max(1, -(-len(rows) // TIMELINE_POINTS))  # ceiling: at most TIMELINE_POINTS + 1
        for i, (ts, correct) in enumerate(rows, start=1):
            hits += correct
            if i % step == 0 or i == len(rows):
                low, high = wilson_interval(hits, i)
                points.append([ts, float(i), hits / i, low, high])
        timeline[name] = points
    return timeline


def _compare(
    control: str,
    challenger: str,
    labelled: list[Labelled],
    alpha: float,
    minimum_effect: float,
    power: float,
    tau: float,
) -> dict[str, Any]:
    outcomes = ((row.variant, row.correct) for row in labelled)
    end = path_end(outcomes, control, challenger, tau)
    s_a, n_a, s_b, n_b = end.counts
    sequential = end.p_value
    test = two_proportion_test(s_a, n_a, s_b, n_b, confidence=1 - alpha)
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
    if p <= alpha:  # significant at a fixed horizon, but the horizon is not reached
        better = "better" if diff > 0 else "worse"
        return (
            f"{challenger} {better} than {control} by {abs(diff):.1f} points "
            f"[{low:.1f}, {high:.1f}], p = {p:.2g} at this sample size; not yet confirmed by the "
            f"always-valid test (p = {p_seq:.2g}) before the planned {needed:,} per arm: if you "
            "have been watching the report, keep collecting before you act"
        )
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
        f"{'variant':<12}{'share':>7}{'traffic':>9}{'errors':>8}{'forced':>8}{'labelled':>10}"
        f"{'accuracy':>10}{'95% CI':>18}{'p50 ms':>8}{'p99 ms':>8}",
    ]
    for v in report["variants"]:
        acc = f"{v['accuracy']:.3f}" if v["accuracy"] is not None else "-"
        ci = "[{:.3f}, {:.3f}]".format(*v["accuracy_ci95"]) if v["labelled"] else "-"
        lat = v["latency_ms"] or {}
        p50 = f"{lat['p50']:.1f}" if lat else "-"
        p99 = f"{lat['p99']:.1f}" if lat else "-"
        name = v["variant"] + ("" if v["enabled"] else " (off)")
        lines.append(
            f"{name:<12}{v['share']:>7.2f}{v['traffic']:>9}{v['errors']:>8}{v['forced']:>8}"
            f"{v['labelled']:>10}{acc:>10}{ci:>18}{p50:>8}{p99:>8}"
        )
    srm = report["sample_ratio"]
    lines.append(f"sample ratio: chi2 {srm['chi2']:.2f}, p = {srm['p_value']:.3g}")
    if srm["warning"]:
        lines.append("!!! " + srm["warning"])
    for shadow in report["shadow"]:
        line = (f"shadow {shadow['variant']}: {shadow['scored']} scored, agreement "
                f"{shadow['agreement']:.3f}")  # fmt: skip
        if shadow["labelled"]:
            test = shadow["mcnemar"]
            line += (f"; {shadow['labelled']} labelled: live {shadow['live_accuracy']:.3f} vs "
                     f"shadow {shadow['shadow_accuracy']:.3f}, McNemar {test['live_only']} vs "
                     f"{test['shadow_only']}, p = {test['p_value']:.2g}")  # fmt: skip
        lines.append(line)
    for trip in report["guardrail_trips"]:
        lines.append(f"!!! guardrail: {trip['variant']} taken out of rotation ({trip['kind']})")
    for c in report["comparisons"]:
        low, high = (x * 100 for x in c["difference_ci"])
        lines.append(
            f"{c['challenger']} - {report['control']}: {c['difference'] * 100:+.1f} points "
            f"[{low:.1f}, {high:.1f}], z-test p = {c['p_value']:.2g}, always-valid p = "
            f"{c['always_valid_p_value']:.2g} ({c['labelled']['control']:,} and "
            f"{c['labelled']['challenger']:,} labelled; {c['samples_needed_per_arm']:,} per arm "
            f"planned for {c['minimum_effect'] * 100:.1f} points)"
        )
    lines += [f"verdict: {c['verdict']}" for c in report["comparisons"]]
    lines += format_rollout(report["rollout"])
    return "\n".join(lines)
