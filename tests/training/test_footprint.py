"""`tuneserve compare` with its cost side: train manifests, export runs and bench-model reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.footprint import train_costs
from tuneserve.cli import main
from tuneserve.details import ExportDetails
from tuneserve.manifest import read_manifest

MB = 2**20


def _compare(capsys: pytest.CaptureFixture[str], out: Path, *argv: str) -> tuple[int, str]:
    code = main(["compare", *argv, "--out", str(out.parent), "--run-id", out.name])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _rows(result: dict) -> dict[str, dict]:
    return {r["key"]: r for r in result["costs"]["table"]}


def test_compare_states_the_verdict_and_the_training_costs(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, printed = _compare(capsys, tmp_path / "c", str(tiny_runs["head"]), str(tiny_runs["lora"]))
    assert code == 0, printed
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    p = result["mcnemar"]["p_value"]
    assert result["alpha"] == 0.05 and result["significant"] == (p < 0.05)
    assert f"p = {p:.3g} (McNemar exact, alpha 0.05)" in result["verdict"]
    assert ("not significant" in result["verdict"]) == (p >= 0.05)
    assert "### Is fine-tuning worth it?" in printed and result["verdict"] in printed
    rows = _rows(result)
    for method, side in (("head", "a"), ("lora", "b")):
        metrics = json.loads((tiny_runs[method] / "metrics.json").read_text())
        manifest = read_manifest(tiny_runs[method])
        trained = sum(
            e.bytes
            for r, e in manifest.artifacts.items()
            if r == "head" or r.startswith("adapter/")
        )
        assert rows["training_seconds"][side] == metrics["training"]["wall_seconds"]
        assert rows["trained_mb"][side] == pytest.approx(trained / MB, abs=1e-3)
        assert rows["batch1_p50_ms"][side] is None and rows["serving_mb"][side] is None
    assert rows["trained_mb"]["b"] > rows["trained_mb"]["a"]  # the adapter on top of the head
    assert "latency n/a" in result["verdict"]
    assert "| batch-1 p50 latency (bench-model) (ms) | n/a | n/a | n/a |" in printed
    acc = next(r for r in result["metrics"] if r["metric"] == "accuracy")
    assert result["deltas"]["accuracy"]["delta"] == pytest.approx(acc["abs_change"])
    # a stricter alpha can only make a difference less significant
    code, _ = _compare(capsys, tmp_path / "strict", str(tiny_runs["head"]),
                       str(tiny_runs["lora"]), "--alpha", "1e-300")  # fmt: skip
    strict = json.loads((tmp_path / "strict" / "compare.json").read_text())
    assert code == 0 and not strict["significant"] and "not significant" in strict["verdict"]


def test_exports_and_bench_reports_fill_the_latency_and_sizes(
    tiny_runs: dict[str, Path],
    tiny_exports: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    head_x, lora_x = tiny_exports["head"], tiny_exports["lora"]
    runs = [str(tiny_runs["head"]), str(tiny_runs["lora"])]
    exports = ["--export-a", str(head_x), "--export-b", str(lora_x)]
    code, printed = _compare(capsys, tmp_path / "sizes", *runs, *exports)
    assert code == 0, printed
    result = json.loads((tmp_path / "sizes" / "compare.json").read_text())
    rows = _rows(result)
    for export, side in ((head_x, "a"), (lora_x, "b")):
        manifest = read_manifest(export)
        serving = manifest.details_as(ExportDetails).serving_model
        size = next(e.bytes for e in manifest.artifacts.values() if e.path == serving)
        assert rows["serving_mb"][side] == pytest.approx(size / MB, abs=1e-3)
        assert rows["merged_mb"][side] > 0
    assert rows["batch1_p50_ms"]["a"] is None  # no bench-model report yet
    roles = {i.role for i in read_manifest(tmp_path / "sizes").inputs}
    assert roles == {"run_a", "run_b", "export_a", "export_b"}

    benches = tmp_path / "bench"
    for name, export in (("a", head_x), ("b", lora_x)):
        assert main(["bench-model", "--from", str(export), "--timed", "10",
                     "--out", str(benches / name)]) == 0  # fmt: skip
    capsys.readouterr()
    given = ["--bench-a", str(benches / "a"), "--bench-b", str(benches / "b")]
    code, printed = _compare(capsys, tmp_path / "lat", *runs, *exports, *given)
    assert code == 0, printed
    result = json.loads((tmp_path / "lat" / "compare.json").read_text())
    rows = _rows(result)
    bench_b = json.loads((benches / "b" / "bench.json").read_text())
    serving = bench_b["models"][f"serving-{bench_b['profile']}"]
    assert rows["batch1_p50_ms"]["b"] == serving["batch1_p50_ms"]
    assert rows["batch32_per_s"]["b"] == serving["batch32_sentences_per_s"]
    ratio = rows["batch1_p50_ms"]["b"] / rows["batch1_p50_ms"]["a"]
    assert rows["batch1_p50_ms"]["ratio"] == pytest.approx(ratio)
    assert f"{ratio:.2f}x the batch-1 p50 latency" in result["verdict"]


def test_cost_inputs_that_do_not_belong_are_refused(
    tiny_runs: dict[str, Path],
    tiny_exports: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = [str(tiny_runs["head"]), str(tiny_runs["lora"])]
    code, err = _compare(capsys, tmp_path / "x", *runs, "--export-b", str(tiny_exports["head"]))
    assert code == 1 and "was made from train run 't-head', not 't-lora'" in err
    code, err = _compare(capsys, tmp_path / "x", *runs, "--bench-a", str(tmp_path))
    assert code == 1 and "need the export they benchmarked" in err
    code, err = _compare(capsys, tmp_path / "x", *runs, "--export-a", str(tiny_exports["head"]),
                         "--bench-a", str(tmp_path))  # fmt: skip
    assert code == 1 and "has no bench.json" in err
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "bench.json").write_text(json.dumps({"export_run": "someone-else", "models": {}}))
    code, err = _compare(capsys, tmp_path / "x", *runs, "--export-a", str(tiny_exports["head"]),
                         "--bench-a", str(wrong))  # fmt: skip
    assert code == 1 and "benchmarks export 'someone-else', not 't-head-cpu-int8'" in err
    code, err = _compare(capsys, tmp_path / "x", *runs, "--alpha", "1.5")
    assert code == 1 and "--alpha must be between 0 and 1, got 1.5" in err
    assert not (tmp_path / "x").exists()


def test_a_students_trained_weights_count_its_own_encoder(tiny_student: Path) -> None:
    """A distilled student trains its whole (shortened) encoder: its weights on disk are the
    encoder's files and the head, not the head alone."""
    manifest = read_manifest(tiny_student)
    encoder = sum(e.bytes for r, e in manifest.artifacts.items() if r.startswith("encoder/"))
    assert encoder > 0
    costs = train_costs(manifest, json.loads((tiny_student / "metrics.json").read_text()))
    head = manifest.artifacts["head"].bytes
    assert costs["trained_mb"] == pytest.approx((encoder + head) / MB, abs=1e-3)
