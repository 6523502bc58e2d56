"""The A/B report from the store: figures, verdicts, sample-ratio warning, the CLI."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from service.config import load_serving_config
from service.report import build_report, format_report
from service.stats import two_proportion_test
from service.store import Store
from tests.service.conftest import write_serving_config
from tuneserve.cli import main


def _fill(
    store: Store, counts: dict[str, tuple[int, float]], forced: int = 0, seed: int = 0
) -> None:
    """``counts``: variant -> (labelled predictions, accuracy); plus forced rows for 'tuned'."""
    rng = random.Random(seed)
    rows, feedback, t = [], [], 0.0
    for variant, (n, accuracy) in counts.items():
        for i in range(n):
            t += 1
            pid = f"{variant}-{i}"
            correct = rng.random() < accuracy
            rows.append({"id": pid, "ts": t, "variant": variant, "model_version": "m",
                         "unit": "user", "unit_hash": "h", "forced": 0, "label": "positive",
                         "score": 0.9, "latency_ms": float(i % 50), "text": None})  # fmt: skip
            feedback.append((pid, "positive" if correct else "negative"))
    for i in range(forced):
        rows.append({"id": f"f{i}", "ts": t + i, "variant": "tuned", "model_version": "m",
                     "unit": "forced", "unit_hash": None, "forced": 1, "label": "positive",
                     "score": 0.9, "latency_ms": 1.0, "text": None})  # fmt: skip
        feedback.append((f"f{i}", "negative"))
    rng.shuffle(rows)  # the order rows are logged in does not matter; time does
    store.log_predictions(rows)
    for pid, label in feedback:
        store.add_feedback(pid, label)


@pytest.fixture
def settings(tmp_path: Path, tiny_exports: dict[str, Path]):  # type: ignore[no-untyped-def]
    path = write_serving_config(
        tmp_path / "serving.toml",
        {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora"]},
        "baseline",
    )
    return load_serving_config(path)


def test_report_finds_the_better_model(tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "s.sqlite")
    _fill(store, {"baseline": (1500, 0.80), "tuned": (1500, 0.88)}, forced=200)
    report = build_report(store, settings)
    by_name = {v["variant"]: v for v in report["variants"]}
    assert by_name["tuned"]["traffic"] == 1500 and by_name["tuned"]["forced"] == 200
    assert by_name["tuned"]["labelled"] == 1500  # forced feedback is left out
    comparison = report["comparisons"][0]
    rows = store.labelled()
    hits = {v: sum(ok for name, _, ok, _ in rows if name == v) for v in ("baseline", "tuned")}
    expected = two_proportion_test(hits["baseline"], 1500, hits["tuned"], 1500)
    assert comparison["p_value"] == pytest.approx(expected.p_value)
    assert comparison["p_value"] < 0.01 and comparison["always_valid_p_value"] < 0.05
    assert comparison["verdict"].startswith("tuned better than baseline by ")
    assert by_name["baseline"]["latency_ms"]["p50"] == pytest.approx(24.5)
    assert not report["sample_ratio"]["mismatch"]
    text = format_report(report)
    assert "verdict: tuned better" in text and "sample ratio" in text


def test_report_says_when_there_is_not_enough_data_and_flags_srm(
    tmp_path: Path,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    store = Store(tmp_path / "s.sqlite")
    _fill(store, {"baseline": (52, 0.8), "tuned": (48, 0.82)})
    verdict = build_report(store, settings)["comparisons"][0]["verdict"]
    assert verdict.startswith("not enough data: about ")
    skewed = Store(tmp_path / "skewed.sqlite")
    _fill(skewed, {"baseline": (5200, 0.8), "tuned": (4800, 0.8)})
    report = build_report(skewed, settings)
    assert report["sample_ratio"]["mismatch"] and "SAMPLE RATIO MISMATCH" in format_report(report)


def test_cli_prints_the_report(
    tmp_path: Path,
    settings,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    db = tmp_path / "s.sqlite"
    _fill(Store(db), {"baseline": (300, 0.8), "tuned": (300, 0.9)})
    config = tmp_path / "serving.toml"
    assert main(["ab-report", "--db", str(db), "--config", str(config)]) == 0
    assert "A/B report" in capsys.readouterr().out
    assert main(["ab-report", "--db", str(db), "--config", str(config), "--json"]) == 0
    assert '"comparisons"' in capsys.readouterr().out
    assert main(["ab-report", "--db", str(tmp_path / "none.sqlite"), "--config", str(config)]) == 1
    assert "no experiment store" in capsys.readouterr().err
