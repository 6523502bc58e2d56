"""`tuneserve analyze`: build the analysis of a train run, print it, write its directory."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from training.analysis import page, plots
from training.analysis.calibration import ECE_BINS, calibrate
from training.analysis.cases import confident_mistakes, disagreements
from training.analysis.runs import RunPredictions, check_paired, load_predictions, token_lengths
from training.analysis.slices import slice_accuracy
from training.metrics import classification_metrics
from tuneserve.details import AnalysisDetails
from tuneserve.errors import ConfigError
from tuneserve.manifest import (
    build_manifest,
    input_entry,
    run_directory,
    write_json_atomic,
    write_manifest,
)

log = logging.getLogger(__name__)

ANALYSIS_VERSION = 1
FILES = {
    "analysis_json": "analysis.json",
    "analysis_html": "analysis.html",
    "confusion_png": "confusion.png",
    "confusion_csv": "confusion.csv",
    "per_class_csv": "per_class.csv",
    "reliability_png": "reliability.png",
}


def _run_info(run: RunPredictions) -> dict[str, Any]:
    return {
        "run_dir": str(run.run_dir),
        "run_id": run.run_id,
        "method": run.details.method,
        "base_model": run.details.base_model.name,
        "max_length": run.details.model.max_length,
    }


def build_analysis(
    run: RunPredictions,
    baseline: RunPredictions | None = None,
    *,
    top: int = 20,
    samples: int = 10,
    bins: int = ECE_BINS,
    length_buckets: int = 4,
) -> dict[str, Any]:
    """Every figure of the analysis as one JSON-ready dict (stable keys, versioned)."""
    for name, value, least in (
        ("--top", top, 0),
        ("--samples", samples, 0),
        ("--bins", bins, 1),
        ("--length-buckets", length_buckets, 1),
    ):
        if value < least:
            raise ConfigError(f"{name} must be at least {least}, got {value}")
    if baseline is not None:
        check_paired(run, baseline)
    names = run.label_names()
    log.info("tokenising %d test texts for the length slices", len(run.texts))
    lengths = token_lengths(run)
    metrics = classification_metrics(
        run.labels.tolist(), run.preds.tolist(), dict(enumerate(names))
    )
    log.info("calibration: %d bins, temperature fitted on dev", bins)
    return {
        "analysis_version": ANALYSIS_VERSION,
        "run": _run_info(run),
        "baseline": None if baseline is None else _run_info(baseline),
        "test_examples": len(run.labels),
        "labels": names,
        "metrics": metrics,
        "calibration": calibrate(run.logits, run.labels, run.dev_logits, run.dev_labels, bins),
        "confident_mistakes": {
            "total_mistakes": int((~run.correct).sum()),
            "shown": confident_mistakes(run, top, lengths),
        },
        "slices": slice_accuracy(run, lengths, length_buckets),
        "against": None if baseline is None else disagreements(run, baseline, samples, lengths),
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _short(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def summary_lines(analysis: dict[str, Any]) -> list[str]:
    """The analysis as a terminal report."""
    run, m, cal = analysis["run"], analysis["metrics"], analysis["calibration"]
    names = analysis["labels"]
    width = max(12, *(len(n) + 2 for n in names))
    lines = [
        f"Analysis of {run['run_id']} ({run['method']}) on {analysis['test_examples']} test "
        f"examples: accuracy {m['accuracy']:.4f}, macro F1 {m['f1_macro']:.4f}, weighted F1 "
        f"{m['f1_weighted']:.4f}",
        "",
        f"{'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for name, c in m["per_class"].items():
        lines.append(
            f"{name:<{width}} {c['precision']:>9.4f} {c['recall']:>7.4f} {c['f1']:>7.4f} "
            f"{c['support']:>8}"
        )
    for avg in ("macro", "weighted"):
        lines.append(
            f"{avg + ' avg':<{width}} {m[f'precision_{avg}']:>9.4f} {m[f'recall_{avg}']:>7.4f} "
            f"{m[f'f1_{avg}']:>7.4f} {m['examples']:>8}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * width + "".join(f"{n:>{width}}" for n in names))
    for name, row in zip(names, m["confusion_matrix"]["matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    test = cal["test"]
    lines += [
        "",
        f"calibration on test ({cal['binning']}): ECE {test['ece']:.4f}, MCE {test['mce']:.4f}, "
        f"NLL {test['nll']:.4f}, Brier {test['brier']:.4f}",
    ]
    if cal["temperature"] is not None:
        t, scaled = cal["temperature"], cal["test_scaled"]
        lines.append(
            f"temperature scaling fitted on dev ({t['dev_examples']} examples): T = {t['T']:.3f}; "
            f"test ECE {test['ece']:.4f} -> {scaled['ece']:.4f}, NLL {test['nll']:.4f} -> "
            f"{scaled['nll']:.4f}, Brier {test['brier']:.4f} -> {scaled['brier']:.4f}"
        )
    if cal["note"]:
        lines.append(f"note: {cal['note']}")
    lines += ["", f"slices{'':<{width + 24}} {'count':>6} {'accuracy':>9}"]
    for group in ("label", "length", "truncation"):
        for s in analysis["slices"][group]:
            lines.append(f"  {s['slice']:<{width + 28}} {s['count']:>6} {_fmt(s['accuracy']):>9}")
    mistakes = analysis["confident_mistakes"]
    lines += [
        "",
        f"most confident mistakes ({len(mistakes['shown'])} of {mistakes['total_mistakes']}):",
    ]
    for x in mistakes["shown"][:10]:
        lines.append(
            f"  #{x['index']:<5} {x['confidence']:.3f} {x['label']} -> {x['pred']}: "
            f"{_short(x['text'])}"
        )
    if analysis["against"] is not None:
        lines += ["", *against_lines(analysis)]
    return lines


def against_lines(analysis: dict[str, Any]) -> list[str]:
    """The paired comparison with the baseline, in words."""
    a, run = analysis["against"], analysis["run"]
    cells, test = a["cells"], a["mcnemar"]
    me, base = run["run_id"], a["baseline_run_id"]
    return [
        f"against {base} ({a['baseline_method']}): both right {cells['both_right']}, only {me} "
        f"right {cells['only_run_right']}, only {base} right {cells['only_baseline_right']}, "
        f"both wrong {cells['both_wrong']}; accuracy {a['run_accuracy']:.4f} vs "
        f"{a['baseline_accuracy']:.4f}; McNemar p = {test['p_value']:.3g} ({test['method']})",
    ]


def write_table(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV file."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_files(analysis: dict[str, Any], directory: Path) -> None:
    """analysis.json, the CSV tables, the PNG figures and the HTML page into ``directory``."""
    m, names = analysis["metrics"], analysis["labels"]
    title = f"{analysis['run']['run_id']} ({analysis['run']['method']})"
    write_table(
        directory / FILES["confusion_csv"],
        ["true \\ predicted", *names],
        [[n, *row] for n, row in zip(names, m["confusion_matrix"]["matrix"], strict=True)],
    )
    write_table(
        directory / FILES["per_class_csv"],
        ["class", "precision", "recall", "f1", "support"],
        [[n, c["precision"], c["recall"], c["f1"], c["support"]] for n, c in m["per_class"].items()]
        + [
            [f"{avg} avg", m[f"precision_{avg}"], m[f"recall_{avg}"], m[f"f1_{avg}"], m["examples"]]
            for avg in ("macro", "weighted")
        ],
    )
    plots.plot_confusion(
        m["confusion_matrix"]["matrix"], names, directory / FILES["confusion_png"], title
    )
    plots.plot_reliability(analysis["calibration"], directory / FILES["reliability_png"], title)
    analysis["files"] = dict(FILES)
    write_json_atomic(directory / FILES["analysis_json"], analysis)
    (directory / FILES["analysis_html"]).write_text(page.to_html(analysis, directory), "utf-8")


def default_out(run_dir: Path, against: Path | None) -> Path:
    """artifacts/analysis/RUN[-vs-BASELINE] (directory names of the runs)."""
    name = run_dir.resolve().name + (f"-vs-{against.resolve().name}" if against else "")
    return Path("artifacts") / "analysis" / name


def run_analyze(
    run_dir: Path,
    against: Path | None = None,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    **options: int,
) -> Path:
    """Analyse ``run_dir`` (against ``against``), write the directory ``out``, print the
    report; returns the directory."""
    log.info("reading %s", run_dir)
    run = load_predictions(run_dir)
    baseline = None if against is None else load_predictions(against)
    analysis = build_analysis(run, baseline, **options)
    target = out or default_out(run_dir, against)
    with run_directory(target.parent, target.name, overwrite=overwrite) as staging:
        write_files(analysis, staging)
        details = AnalysisDetails(
            run=run.run_id,
            method=run.details.method,
            baseline_run=None if baseline is None else baseline.run_id,
            test_examples=analysis["test_examples"],
            ece_bins=analysis["calibration"]["bins"],
            temperature=(analysis["calibration"]["temperature"] or {}).get("T"),
        )
        inputs = [input_entry("train_run", run_dir)]
        if against is not None:
            inputs.append(input_entry("baseline_run", against))
        cal = analysis["calibration"]
        manifest = build_manifest(
            run_id=target.name,
            run_dir=staging,
            config={key: value for key, value in options.items()},
            artifacts=FILES,
            inputs=inputs,
            metrics={
                "accuracy": analysis["metrics"]["accuracy"],
                "ece": cal["test"]["ece"],
                "ece_scaled": None if cal["test_scaled"] is None else cal["test_scaled"]["ece"],
            },
            libraries=("numpy", "scipy", "matplotlib"),
            details=details,
        )
        write_manifest(staging, manifest)
    print("\n".join(summary_lines(analysis)))
    print(f"analysis -> {target} (open {target / FILES['analysis_html']})")
    return target
