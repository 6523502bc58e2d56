"""`tuneserve analyze` on real tiny runs: every file, figures checked against direct counts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.compare import mcnemar
from tuneserve.cli import main
from tuneserve.details import AnalysisDetails
from tuneserve.manifest import read_manifest


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _analyze(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["analyze", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def against(tiny_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analysis") / "lora-vs-head"
    code = main(
        [
            "analyze",
            str(tiny_runs["lora"]),
            "--against",
            str(tiny_runs["head"]),
            "--out",
            str(out),
            "--top",
            "5",
            "--samples",
            "3",
        ]
    )
    assert code == 0
    return out


def test_every_file_is_written_and_the_manifest_reads_back(
    against: Path, tiny_runs: dict[str, Path]
) -> None:
    names = {p.name for p in against.iterdir()}
    assert names == {
        "analysis.json",
        "analysis.html",
        "confusion.png",
        "confusion.csv",
        "per_class.csv",
        "reliability.png",
        "manifest.json",
    }
    manifest = read_manifest(against, stage="analysis")  # every sha256 verified
    details = manifest.details_as(AnalysisDetails)
    assert details.run == "t-lora" and details.baseline_run == "t-head"
    assert (details.test_examples, details.ece_bins) == (50, 15)
    assert {i.role for i in manifest.inputs} == {"train_run", "baseline_run"}
    html = (against / "analysis.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and 'src="http' not in html
    assert "Most confident mistakes" in html and "only t-head right" in html


def test_figures_match_the_train_run(against: Path, tiny_runs: dict[str, Path]) -> None:
    analysis = json.loads((against / "analysis.json").read_text())
    assert analysis["analysis_version"] == 1 and analysis["labels"] == ["negative", "positive"]
    trained = json.loads((tiny_runs["lora"] / "metrics.json").read_text())["test"]
    for name, figures in trained["per_class"].items():
        assert analysis["metrics"]["per_class"][name] == pytest.approx(figures)
    assert analysis["metrics"]["confusion_matrix"] == trained["confusion_matrix"]
    with open(against / "confusion.csv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true \\ predicted", "negative", "positive"]
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == trained["confusion_matrix"]["matrix"]
    with open(against / "per_class.csv", encoding="utf-8") as handle:
        per_class = {r[0]: r for r in csv.reader(handle)}
    assert float(per_class["positive"][3]) == pytest.approx(trained["per_class"]["positive"]["f1"])
    assert "macro avg" in per_class and "weighted avg" in per_class


def test_calibration_uses_the_stored_dev_predictions(
    against: Path, tiny_runs: dict[str, Path]
) -> None:
    cal = json.loads((against / "analysis.json").read_text())["calibration"]
    assert sum(b["count"] for b in cal["test"]["reliability"]) == 50
    preds = _jsonl(tiny_runs["lora"] / "test_predictions.jsonl")
    confidence = np.array([max(p["scores"]) for p in preds])
    correct = np.array([p["pred"] == p["label"] for p in preds])
    assert cal["test"]["accuracy"] == pytest.approx(correct.mean())
    assert cal["test"]["mean_confidence"] == pytest.approx(confidence.mean(), abs=1e-5)
    for p in preds:  # full-precision log-probabilities beside the rounded scores
        assert np.exp(p["log_probs"]) == pytest.approx(p["scores"], abs=2e-6)
    dev = _jsonl(tiny_runs["lora"] / "dev_predictions.jsonl")
    dev_texts = _jsonl(tiny_runs["lora"] / "eval" / "dev.jsonl")
    assert [d["label"] for d in dev] == [d["label"] for d in dev_texts]
    t = cal["temperature"]
    assert t["dev_examples"] == len(dev) == 50
    assert 0.05 <= t["T"] <= 20 and t["dev_nll_after"] <= t["dev_nll_before"] + 1e-9
    assert cal["test_scaled"]["accuracy"] == cal["test"]["accuracy"]


def test_disagreement_cells_match_a_direct_count(against: Path, tiny_runs: dict[str, Path]) -> None:
    a = json.loads((against / "analysis.json").read_text())["against"]
    lora = [p["pred"] == p["label"] for p in _jsonl(tiny_runs["lora"] / "test_predictions.jsonl")]
    head = [p["pred"] == p["label"] for p in _jsonl(tiny_runs["head"] / "test_predictions.jsonl")]
    pairs = list(zip(lora, head, strict=True))
    assert a["cells"] == {
        "both_right": pairs.count((True, True)),
        "only_run_right": pairs.count((True, False)),
        "only_baseline_right": pairs.count((False, True)),
        "both_wrong": pairs.count((False, False)),
    }
    assert a["mcnemar"]["p_value"] == pytest.approx(mcnemar(head, lora)["p_value"])
    texts = [e["text"] for e in _jsonl(tiny_runs["lora"] / "eval" / "test.jsonl")]
    for key, want in (("only_run_right", (True, False)), ("only_baseline_right", (False, True))):
        shown = a["samples"][key]
        assert len(shown) == min(3, pairs.count(want))
        for x in shown:
            assert pairs[x["index"]] == want and texts[x["index"]] == x["text"]


def test_confident_mistakes_are_wrong_and_ordered(
    against: Path, tiny_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    mistakes = json.loads((against / "analysis.json").read_text())["confident_mistakes"]
    preds = _jsonl(tiny_runs["lora"] / "test_predictions.jsonl")
    wrong = [p for p in preds if p["pred"] != p["label"]]
    assert mistakes["total_mistakes"] == len(wrong)
    shown = mistakes["shown"]
    assert len(shown) == min(5, len(wrong))
    assert all(x["label"] != x["pred"] for x in shown)
    assert [x["confidence"] for x in shown] == sorted(
        (x["confidence"] for x in shown), reverse=True
    )
    if shown:  # the most confident mistake of all comes first
        assert shown[0]["confidence"] == pytest.approx(
            max(max(p["scores"]) for p in wrong), abs=1e-5
        )


def test_string_labels_truncation_and_slices(
    topic_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "topics"
    code, printed, err = _analyze(
        capsys, str(topic_runs["lora"]), "--against", str(topic_runs["head"]), "--out", str(out)
    )
    assert code == 0, err
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["labels"] == ["Sci/Tech", "Sports", "World"]
    assert set(analysis["metrics"]["per_class"]) == {"Sci/Tech", "Sports", "World"}
    examples = _jsonl(topic_runs["lora"] / "eval" / "test.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(str(topic_runs["lora"] / "tokenizer"))
    lengths = [len(tokenizer(e["text"])["input_ids"]) for e in examples]
    slices = analysis["slices"]
    kept, cut = slices["truncation"]
    assert cut["slice"] == "> 16 tokens (truncated)"
    assert cut["count"] == sum(n > 16 for n in lengths) > 0
    assert kept["count"] + cut["count"] == len(examples)
    assert sum(s["count"] for s in slices["length"]) == len(examples)
    assert [s["count"] for s in slices["label"]] == [
        sum(e["label"] == i for e in examples) for i in range(3)
    ]
    preds = _jsonl(topic_runs["lora"] / "test_predictions.jsonl")
    long_right = [p["pred"] == p["label"] for p, n in zip(preds, lengths, strict=True) if n > 16]
    assert cut["accuracy"] == pytest.approx(np.mean(long_right))
    assert "Sci/Tech" in printed and f"analysis -> {out}" in printed
    assert "temperature scaling fitted on dev" in printed


def test_a_run_without_dev_predictions_is_analysed_without_temperature(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_runs["head"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["artifacts"]["dev_predictions"]  # as runs trained before it was stored
    (old / "manifest.json").write_text(json.dumps(manifest))
    code, printed, _ = _analyze(capsys, str(old), "--out", str(tmp_path / "a"))
    assert code == 0
    cal = json.loads((tmp_path / "a" / "analysis.json").read_text())["calibration"]
    assert cal["temperature"] is None and "no dev predictions" in cal["note"]
    assert "no dev predictions" in printed
    assert read_manifest(tmp_path / "a").details_as(AnalysisDetails).temperature is None


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, _, err = _analyze(capsys, *argv)
    assert code == 1 and "Traceback" not in err, err
    return err


def test_errors_say_what_is_wrong(
    tiny_runs: dict[str, Path],
    topic_runs: dict[str, Path],
    against: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = ["--out", str(tmp_path / "x")]
    compare_dir = tiny_runs["root"] / "compare" / "t"
    err = _error(capsys, str(compare_dir), *out)
    assert "is a 'compare' run, expected a 'train' run" in err and "train run directory" in err
    err = _error(capsys, str(tmp_path), *out)
    assert "has no manifest.json" in err
    bare = tmp_path / "bare"
    shutil.copytree(tiny_runs["lora"], bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    del manifest["artifacts"]["test_predictions"]
    (bare / "manifest.json").write_text(json.dumps(manifest))
    err = _error(capsys, str(bare), *out)
    assert "has no test_predictions artifact" in err
    err = _error(capsys, str(topic_runs["lora"]), "--against", str(tiny_runs["head"]), *out)
    assert "evaluated on different test splits" in err and "--against needs" in err
    err = _error(capsys, str(tiny_runs["lora"]), "--top", "-1", *out)
    assert "--top must be at least 0, got -1" in err
    err = _error(capsys, str(tiny_runs["lora"]), "--out", str(against))
    assert "already exists" in err
    assert not (tmp_path / "x").exists()
