"""What a model costs beside its accuracy: training time, size on disk, serving latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneserve.details import ExportDetails
from tuneserve.errors import ConfigError, DataError, ManifestError
from tuneserve.manifest import Manifest, read_manifest

MB = 2**20
BENCH_FILE = "bench.json"
# (key, what, unit): the rows of the cost table, in order
COST_ROWS = (
    ("training_seconds", "training time", "s"),
    ("training_examples_per_second", "training throughput", "examples/s"),
    ("peak_training_rss_mb", "peak training memory (RSS)", "MB"),
    ("trainable_parameters", "trainable parameters", ""),
    ("trained_mb", "trained weights on disk (head, adapter or student encoder)", "MB"),
    ("merged_mb", "merged model on disk (export)", "MB"),
    ("serving_mb", "serving model on disk (export)", "MB"),
    ("batch1_p50_ms", "batch-1 p50 latency (bench-model)", "ms"),
    ("batch1_p99_ms", "batch-1 p99 latency (bench-model)", "ms"),
    ("batch32_per_s", "batch-32 throughput (bench-model)", "texts/s"),
)


def _bytes(manifest: Manifest, keep: Any) -> int:
    return sum(e.bytes for role, e in manifest.artifacts.items() if keep(role, e.path))


def train_costs(manifest: Manifest, metrics: dict[str, Any]) -> dict[str, Any]:
    """From a train run: its training time, throughput, memory, parameters and trained files."""
    training, params = metrics.get("training", {}), metrics.get("parameters", {})
    # what training produced: the head, a LoRA adapter, a distilled student's own encoder
    trained = _bytes(
        manifest, lambda role, _: role == "head" or role.startswith(("adapter/", "encoder/"))
    )
    return {
        "training_seconds": training.get("wall_seconds"),
        "training_examples_per_second": training.get("examples_per_second"),
        "peak_training_rss_mb": training.get("peak_rss_mb"),
        "trainable_parameters": params.get("trainable"),
        "trained_mb": round(trained / MB, 3),
    }


def _bench(bench_dir: Path | None, export_dir: Path, export: Manifest) -> dict[str, Any]:
    """The serving model's row of a bench-model report: BENCH_DIR, or the default place
    (artifacts/bench-model/<export run> beside artifacts/export/)."""
    given = bench_dir is not None
    folder = bench_dir or export_dir.parent.parent / "bench-model" / export.run_id
    path = folder / BENCH_FILE
    if not path.is_file():
        if given:
            raise ManifestError(f"{folder} has no {BENCH_FILE}: point at a bench-model output")
        return {"bench": None}
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("export_run") != export.run_id:
        raise DataError(
            f"{path} benchmarks export {report.get('export_run')!r}, not {export.run_id!r}: "
            f"run `tuneserve bench-model --from {export_dir}`"
        )
    models = report["models"]
    row = models.get(f"serving-{report['profile']}") or models["onnx-fp32"]
    return {
        "bench": str(path),
        "batch1_p50_ms": row["batch1_p50_ms"],
        "batch1_p99_ms": row["batch1_p99_ms"],
        "batch32_per_s": row["batch32_sentences_per_s"],
    }


def export_costs(export_dir: Path, train_run_id: str, bench_dir: Path | None) -> dict[str, Any]:
    """From an export run of ``train_run_id``: model sizes, and latency when benchmarked."""
    export = read_manifest(export_dir, stage="export")
    details = export.details_as(ExportDetails)
    if details.train_run != train_run_id:
        raise DataError(
            f"export {export_dir} was made from train run {details.train_run!r}, not "
            f"{train_run_id!r}: pass the export of the run it stands beside"
        )
    return {
        "export": str(export_dir),
        "profile": details.profile,
        "numerics": details.numerics(),
        "merged_mb": round(_bytes(export, lambda _, p: p.startswith("merged/")) / MB, 3),
        "serving_mb": round(_bytes(export, lambda _, p: p == details.serving_model) / MB, 3),
        **_bench(bench_dir, export_dir, export),
    }


def run_costs(
    manifest: Manifest,
    metrics: dict[str, Any],
    export_dir: Path | None = None,
    bench_dir: Path | None = None,
) -> dict[str, Any]:
    """Every cost figure of one side of a comparison (None where not measured)."""
    if bench_dir is not None and export_dir is None:
        raise ConfigError("--bench-a/--bench-b need the export they benchmarked: --export-a/-b")
    costs: dict[str, Any] = dict.fromkeys(key for key, _, _ in COST_ROWS)
    costs |= {"export": None, "bench": None, "profile": None, "numerics": None}
    costs |= train_costs(manifest, metrics)
    if export_dir is not None:
        costs |= export_costs(export_dir, manifest.run_id, bench_dir)
    return costs


def cost_table(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per cost figure: A, B and B / A (None where either is missing)."""
    rows = []
    for key, what, unit in COST_ROWS:
        va, vb = a.get(key), b.get(key)
        ratio = (
            vb / va if isinstance(va, int | float) and isinstance(vb, int | float) and va else None
        )
        rows.append({"key": key, "what": what, "unit": unit, "a": va, "b": vb, "ratio": ratio})
    return rows
