"""Core fixtures: hand-built stage details for manifests written without running a stage."""

from __future__ import annotations

from tuneserve.details import BaseModelInfo, ClassifierInfo, DataFile, TrainDetails


def train_details(**changes: object) -> TrainDetails:
    """Details of a head-only train run of a two-label model (fields overridable)."""
    details = TrainDetails(
        method="head",
        base_model=BaseModelInfo(name="tiny-bert", source="directory", fingerprint="f" * 64),
        model=ClassifierInfo(
            pooling="mean",
            max_length=32,
            num_labels=2,
            hidden_size=16,
            head_file="head.safetensors",
            adapter_dir=None,
            lora_targets=[],
            model_input_names=["input_ids", "attention_mask"],
        ),
        id2label={"0": "negative", "1": "positive"},
        label2id={"negative": 0, "positive": 1},
        raw_labels=["0", "1"],
        test_fingerprint="0" * 64,
        data_files={"train": DataFile(path="train.tsv", sha256="a" * 64)},
    )
    return details.model_copy(update=changes)
