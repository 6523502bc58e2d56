"""A train run as the analysis reads it: its test (and dev) predictions, texts and label map."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneserve.details import TrainDetails
from tuneserve.errors import DataError, ManifestError
from tuneserve.manifest import Manifest, read_manifest

_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class RunPredictions:
    """One train run's predictions on its test split (and dev split, when stored)."""

    run_dir: Path
    manifest: Manifest
    details: TrainDetails
    texts: list[str]
    labels: np.ndarray  # true class ids
    logits: np.ndarray  # log-probabilities: logits up to a per-row constant
    dev_labels: np.ndarray | None
    dev_logits: np.ndarray | None

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def probs(self) -> np.ndarray:
        return np.exp(self.logits)

    @property
    def preds(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.preds == self.labels

    def label_names(self) -> list[str]:
        """Label names in class-id order."""
        return [self.details.id2label[str(i)] for i in range(len(self.details.id2label))]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _logits(rows: list[dict[str, Any]], num_labels: int, where: Path) -> np.ndarray:
    """The stored log-probabilities, or the log of the rounded scores of older runs."""
    if any(len(r.get("log_probs") or r["scores"]) != num_labels for r in rows):
        raise DataError(f"{where} has rows without {num_labels} class scores: train it again")
    if all("log_probs" in r for r in rows):
        return np.asarray([r["log_probs"] for r in rows], dtype=np.float64)
    scores = np.asarray([r["scores"] for r in rows], dtype=np.float64)
    return np.log(np.maximum(scores, _TINY))


def _split(
    run_dir: Path, manifest: Manifest, role: str, num_labels: int
) -> tuple[np.ndarray, np.ndarray] | None:
    if role not in manifest.artifacts:
        return None
    path = run_dir / manifest.artifacts[role].path
    rows = _jsonl(path)
    return np.asarray([int(r["label"]) for r in rows]), _logits(rows, num_labels, path)


def load_predictions(run_dir: Path) -> RunPredictions:
    """Read and check a finished train run (every hash verified) for the analysis."""
    try:
        manifest = read_manifest(run_dir, stage="train")
    except ManifestError as exc:
        raise ManifestError(
            f"{exc} (tuneserve analyze reads a train run directory, e.g. artifacts/train/demo-lora)"
        ) from exc
    details = manifest.details_as(TrainDetails)
    for role in ("test_predictions", "eval_test"):
        if role not in manifest.artifacts:
            raise ManifestError(
                f"{run_dir} has no {role} artifact: the analysis needs the test predictions "
                "and texts a train run writes; train it again with this tuneserve"
            )
    num_labels = len(details.id2label)
    test = _split(run_dir, manifest, "test_predictions", num_labels)
    if test is None:  # checked above; this narrows the type
        raise ManifestError(f"{run_dir} has no test_predictions artifact")
    labels, logits = test
    examples = _jsonl(run_dir / manifest.artifacts["eval_test"].path)
    if len(examples) != len(labels) or any(
        int(e["label"]) != int(y) for e, y in zip(examples, labels, strict=False)
    ):
        raise DataError(
            f"{run_dir}: test_predictions.jsonl and eval/test.jsonl do not pair up "
            f"({len(labels)} predictions, {len(examples)} texts): train the run again"
        )
    dev = _split(run_dir, manifest, "dev_predictions", num_labels)
    return RunPredictions(
        run_dir=run_dir,
        manifest=manifest,
        details=details,
        texts=[str(e["text"]) for e in examples],
        labels=labels,
        logits=logits,
        dev_labels=None if dev is None else dev[0],
        dev_logits=None if dev is None else dev[1],
    )


def check_paired(run: RunPredictions, baseline: RunPredictions) -> None:
    """Refuse a baseline evaluated on other test examples or with another label map."""
    if (
        run.details.test_fingerprint != baseline.details.test_fingerprint
        or len(run.labels) != len(baseline.labels)
        or run.texts != baseline.texts
    ):
        raise DataError(
            f"{run.run_dir} and {baseline.run_dir} were evaluated on different test splits "
            f"({len(run.labels)} vs {len(baseline.labels)} examples, test fingerprints "
            f"{run.details.test_fingerprint[:12]} vs {baseline.details.test_fingerprint[:12]}): "
            "--against needs a run trained on the same data and test subset"
        )
    if run.details.id2label != baseline.details.id2label:
        raise DataError(
            f"{run.run_dir} and {baseline.run_dir} have different label maps "
            f"({run.details.id2label} vs {baseline.details.id2label}): train both on the same "
            "labels"
        )


def token_lengths(run: RunPredictions) -> list[int] | None:
    """Token counts of the test texts (special tokens included) with the run's tokenizer."""
    if not any(role.startswith("tokenizer/") for role in run.manifest.artifacts):
        return None
    from transformers import AutoTokenizer

    from training.checks import token_lengths_from

    tokenizer = AutoTokenizer.from_pretrained(str(run.run_dir / "tokenizer"), use_fast=True)
    return token_lengths_from(tokenizer)(run.texts)
