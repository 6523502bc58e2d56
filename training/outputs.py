"""What a train run leaves behind: weights, tokenizer, eval splits, reports, and its details."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from training import checks
from training.config import Method, TrainingConfig
from training.distributed import World
from training.model import ADAPTER_DIR, HEAD_FILE, TextClassifier, save_adapter, save_head
from tuneserve.details import (
    BaseModelInfo,
    ClassifierInfo,
    DataFile,
    DistillInfo,
    ParallelInfo,
    TrainDetails,
)
from tuneserve.manifest import sha256_file, write_json_atomic
from tuneserve.models import BaseModelRef

REPORTS = {
    "metrics": "metrics.json",
    "training_log": "training_log.json",
    "data_report": "data_report.json",
    "curves": "curves.png",
    "test_predictions": "test_predictions.jsonl",
    "dev_predictions": "dev_predictions.jsonl",  # for calibration (`tuneserve analyze`)
}
ENCODER_DIR = "encoder"
_TINY = float(np.finfo(np.float32).tiny)  # log-probabilities stay finite


def fingerprint(texts: list[str], labels: list[int]) -> str:
    """Identifies a split's content, so comparisons pair the same examples."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def write_outputs(
    run_dir: Path,
    method: Method,
    model: TextClassifier,
    ref: BaseModelRef,
    tokenizer: Any,
    data: checks.CheckedData,
    metrics: dict[str, Any],
    training_log: list[dict[str, Any]],
    test_probs: np.ndarray,
    dev_probs: np.ndarray,
) -> dict[str, str]:
    """Write every file of the run but the curves and the manifest; returns role -> path."""
    artifacts = {"head": HEAD_FILE, **REPORTS}
    save_head(model, run_dir / HEAD_FILE)
    if method == "lora":
        save_adapter(model, run_dir / ADAPTER_DIR, ref.name)
        for name in sorted(os.listdir(run_dir / ADAPTER_DIR)):
            artifacts[f"adapter/{name}"] = f"{ADAPTER_DIR}/{name}"
    if method == "distill":  # the student's whole encoder: it is not the base model's
        model.encoder.save_pretrained(str(run_dir / ENCODER_DIR), safe_serialization=True)
        for name in sorted(os.listdir(run_dir / ENCODER_DIR)):
            artifacts[f"encoder/{name}"] = f"{ENCODER_DIR}/{name}"
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    for name in sorted(os.listdir(run_dir / "tokenizer")):
        artifacts[f"tokenizer/{name}"] = f"tokenizer/{name}"
    (run_dir / "eval").mkdir()
    for split in (data.dev, data.test):
        write_examples(run_dir / "eval" / f"{split.name}.jsonl", split.texts, split.labels)
        artifacts[f"eval_{split.name}"] = f"eval/{split.name}.jsonl"
    write_json_atomic(run_dir / REPORTS["metrics"], metrics)
    write_json_atomic(run_dir / REPORTS["training_log"], training_log)
    write_json_atomic(run_dir / REPORTS["data_report"], data.report)
    write_predictions(run_dir / REPORTS["test_predictions"], data.test.labels, test_probs)
    write_predictions(run_dir / REPORTS["dev_predictions"], data.dev.labels, dev_probs)
    return artifacts


def write_predictions(path: Path, labels: list[int], probs: np.ndarray) -> None:
    """One JSON line per example: its label, the predicted class, every class score, and the
    log-probabilities at full precision (logits up to a constant: temperature scaling needs
    them where a rounded score is 0 or 1)."""
    preds = probs.argmax(1).tolist()
    log_probs = np.log(np.maximum(probs.astype(np.float64), _TINY))
    with open(path, "w", encoding="utf-8") as handle:
        for i, (label, pred) in enumerate(zip(labels, preds, strict=True)):
            row = {
                "index": i,
                "label": label,
                "pred": pred,
                "scores": [round(float(p), 6) for p in probs[i]],
                "log_probs": [float(f"{x:.7g}") for x in log_probs[i]],
            }
            handle.write(json.dumps(row) + "\n")


def write_examples(path: Path, texts: list[str], labels: list[int]) -> None:
    """The cleaned split as JSON lines (text, label id): later stages evaluate on exactly it."""
    with open(path, "w", encoding="utf-8") as handle:
        for text, label in zip(texts, labels, strict=True):
            handle.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")


def data_files(report: dict[str, Any]) -> dict[str, DataFile]:
    """Each split's source file and its sha256 (hub splits carry their id only)."""
    files = {}
    for name, stats in report["splits"].items():
        source = stats.get("source", "")
        if Path(source).is_file():
            files[name] = DataFile(path=source, sha256=sha256_file(source))
        elif source:
            files[name] = DataFile(path=source)
    return files


def train_details(
    method: Method,
    cfg: TrainingConfig,
    ref: BaseModelRef,
    model: TextClassifier,
    data: checks.CheckedData,
    lora_targets: list[str],
    input_names: list[str],
    world: World,
    distill: DistillInfo | None = None,
) -> TrainDetails:
    """The manifest details of a train run: what the export needs to rebuild the classifier."""
    return TrainDetails(
        method=method,
        base_model=BaseModelInfo(
            name=ref.name,
            source=ref.source,
            fingerprint=ref.fingerprint(),
        ),
        model=ClassifierInfo(
            pooling=cfg.model.pooling,
            max_length=cfg.model.max_length,
            num_labels=len(data.id2label),
            hidden_size=int(model.classifier.in_features),
            head_file=HEAD_FILE,
            adapter_dir=ADAPTER_DIR if method == "lora" else None,
            encoder_dir=ENCODER_DIR if method == "distill" else None,
            lora_targets=lora_targets,
            model_input_names=input_names,
        ),
        id2label={str(i): name for i, name in data.id2label.items()},
        label2id={name: i for i, name in data.id2label.items()},
        raw_labels=data.label_keys,
        test_fingerprint=fingerprint(data.test.texts, data.test.labels),
        data_files=data_files(data.report),
        parallel=ParallelInfo(
            world_size=world.size,
            backend=world.backend,  # type: ignore[arg-type]
            global_batch_size=cfg.train.batch_size * cfg.train.grad_accum_steps,
            per_rank_batch_size=-(-cfg.train.batch_size // world.size),
        ),
        distill=distill,
    )
