from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from training.config import TrainingConfig
from training.model import load_trained
from tuneserve.cli import main
from tuneserve.details import CompareDetails, TrainDetails
from tuneserve.manifest import Manifest, read_manifest, sha256_file
from tuneserve.models import resolve_base_model

TRAIN_FILES = {
    "head.safetensors",
    "metrics.json",
    "training_log.json",
    "data_report.json",
    "curves.png",
    "test_predictions.jsonl",
    "dev_predictions.jsonl",
    "manifest.json",
    "tokenizer",
}


@pytest.fixture(scope="module")
def both_runs(tiny_runs: dict[str, Path]) -> dict[str, Path]:
    return tiny_runs


def test_every_artifact_is_written_and_hashed(both_runs: dict[str, Path]) -> None:
    for method in ("head", "lora"):
        run = both_runs[method]
        assert {p.name for p in run.iterdir()} >= TRAIN_FILES
        manifest = read_manifest(run, stage="train")  # verifies every sha256
        details = manifest.details_as(TrainDetails)
        assert details.method == method
        assert details.id2label == {"0": "negative", "1": "positive"}
        assert details.base_model.fingerprint
        assert {"eval_dev", "eval_test"} <= set(manifest.artifacts)
        lines = (run / "eval" / "test.jsonl").read_text().splitlines()
        assert len(lines) == 50 and set(json.loads(lines[0])) == {"text", "label"}
        files = details.data_files
        assert set(files) == {"train", "dev", "test"}
        assert files["test"].sha256 == sha256_file(files["test"].path)
        assert manifest.config["method"] == method
        assert "torch" in manifest.libraries
        metrics = json.loads((run / "metrics.json").read_text())
        test = metrics["test"]
        for key in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"):
            assert 0.0 <= test[key] <= 1.0
        assert set(test["per_class"]) == {"negative", "positive"}
        assert sum(map(sum, test["confusion_matrix"]["matrix"])) == 50
        assert metrics["training"]["examples_per_second"] > 0
        assert metrics["training"]["peak_rss_mb"] > 0
    adapter = both_runs["lora"] / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(
        read_manifest(both_runs["lora"]).details_as(TrainDetails).base_model.name
    )
    assert not (both_runs["head"] / "adapter").exists()


def test_train_and_compare_manifests_round_trip(both_runs: dict[str, Path]) -> None:
    """What the stages wrote reads back typed and dumps back to exactly the same JSON."""
    for run in (both_runs["head"], both_runs["lora"], both_runs["root"] / "compare" / "t"):
        raw = json.loads((run / "manifest.json").read_text())
        manifest = read_manifest(run)
        assert type(manifest.details).__name__ == f"{manifest.stage.capitalize()}Details"
        assert manifest.model_dump(mode="json") == raw
        assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest


def test_training_lowers_the_loss(both_runs: dict[str, Path]) -> None:
    for method in ("head", "lora"):
        log = json.loads((both_runs[method] / "training_log.json").read_text())
        losses = [e["loss"] for e in log if "loss" in e]
        evals = [e for e in log if "eval_accuracy" in e]
        assert len(losses) >= 4 and len(evals) == 4
        assert sum(losses[-2:]) < 0.9 * sum(losses[:2]), (method, losses)
        assert log[0]["learning_rate"] > 0


def test_lora_trains_few_parameters(both_runs: dict[str, Path]) -> None:
    metrics = json.loads((both_runs["lora"] / "metrics.json").read_text())
    params = metrics["parameters"]
    assert 0 < params["trainable"] < params["total"]
    head = json.loads((both_runs["head"] / "metrics.json").read_text())["parameters"]
    assert head["trainable"] == 32 * 2 + 2  # hidden 32, two labels: only the head


def test_saved_model_reproduces_recorded_predictions(
    both_runs: dict[str, Path], tiny_bert: Path
) -> None:
    from transformers import AutoTokenizer

    from training.loop import encode_texts, predict_proba

    run = both_runs["lora"]
    manifest = read_manifest(run)
    cfg = TrainingConfig.model_validate(manifest.config)
    model = load_trained(resolve_base_model(str(tiny_bert)), cfg.model, 2, run, has_adapter=True)
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    texts = [
        line.split("\t")[0]
        for line in (Path(cfg.data.source) / "test.tsv").read_text().splitlines()[1:]
    ]
    probs = predict_proba(
        model, encode_texts(tokenizer, texts, 32), 16, tokenizer.pad_token_id, torch.device("cpu")
    )
    recorded = [json.loads(x) for x in (run / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["pred"] for r in recorded] == probs.argmax(1).tolist()
    assert max(abs(r["scores"][1] - p[1]) for r, p in zip(recorded, probs, strict=True)) < 1e-4


def test_lora_b_nonzero_changes_the_encoder(tiny_bert: Path) -> None:
    from training.config import LoraConfig, ModelConfig
    from training.model import add_lora, build_classifier

    ref = resolve_base_model(str(tiny_bert))
    plain = build_classifier(ref, ModelConfig(base=str(tiny_bert)), 2).eval()
    adapted = build_classifier(ref, ModelConfig(base=str(tiny_bert)), 2).eval()
    adapted.classifier.load_state_dict(plain.classifier.state_dict())
    add_lora(adapted, LoraConfig(r=4, init_b_nonzero=True), seed=0)
    batch = {
        "input_ids": torch.tensor([[2, 5, 6, 3]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
    }
    with torch.no_grad():
        assert not torch.allclose(plain(**batch), adapted(**batch), atol=1e-6)


def test_compare_command(both_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = both_runs["root"] / "cmp"
    code = main(
        [
            "compare",
            str(both_runs["head"]),
            str(both_runs["lora"]),
            "--out",
            str(out),
            "--run-id",
            "x",
        ]
    )
    assert code == 0
    result = json.loads((out / "x" / "compare.json").read_text())
    names = [r["metric"] for r in result["metrics"]]
    assert {"accuracy", "f1_macro", "f1[positive]", "recall[negative]"} <= set(names)
    acc = next(r for r in result["metrics"] if r["metric"] == "accuracy")
    assert acc["abs_change"] == pytest.approx(acc["b"] - acc["a"])
    m = result["mcnemar"]
    assert 0.0 <= m["p_value"] <= 1.0
    assert m["only_a_correct"] + m["only_b_correct"] == m["discordant"]
    assert "McNemar" in (out / "x" / "compare.md").read_text()
    assert "McNemar" in capsys.readouterr().out
    compared = read_manifest(out / "x", stage="compare").details_as(CompareDetails)
    assert (compared.method_a, compared.method_b, compared.test_examples) == ("head", "lora", 50)
    assert compared.run_a == read_manifest(both_runs["head"]).run_id
    # the `both` run wrote its own comparison too
    read_manifest(both_runs["root"] / "compare" / "t", stage="compare")


def test_mcnemar_matches_statsmodels_style_exact_test() -> None:
    from scipy import stats

    from training.compare import mcnemar

    a = [True] * 30 + [False] * 5 + [True] * 60
    b = [False] * 30 + [True] * 5 + [True] * 60
    result = mcnemar(a, b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (30, 5)
    assert result["p_value"] == pytest.approx(stats.binomtest(5, 35, 0.5).pvalue)
    assert result["chi2_corrected"] == pytest.approx((25 - 1) ** 2 / 35)


def test_compare_refuses_different_test_splits(
    both_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    shutil.copytree(both_runs["lora"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["details"]["test_fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    code = main(["compare", str(both_runs["head"]), str(other), "--out", str(tmp_path / "c")])
    assert code == 1
    assert "different test splits" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
