"""`tuneserve train`: read and check the data, train each method, write the run directories."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import resource
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import checks, compare
from training.config import Method, TrainingConfig
from training.curves import plot_curves
from training.loop import encode_texts, predict_proba, train_loop
from training.metrics import classification_metrics, headline
from training.model import (
    ADAPTER_DIR,
    HEAD_FILE,
    add_lora,
    build_classifier,
    check_base_model,
    freeze_encoder,
    load_tokenizer,
    parameter_counts,
    save_adapter,
    save_head,
)
from tuneserve.data import RawSplit, is_hub_id, read_hub_split, read_split, resolve_source
from tuneserve.errors import DataError
from tuneserve.manifest import (
    build_manifest,
    input_entry,
    run_directory,
    sha256_file,
    write_manifest,
)
from tuneserve.models import BaseModelRef, resolve_base_model

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "transformers", "peft", "tokenizers", "safetensors", "numpy")
_HUB_SPLITS = {"train": "train", "dev": None, "test": "validation"}


def default_run_id() -> str:
    """A sortable, readable run id: UTC time to the second."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def read_raw_splits(
    cfg: TrainingConfig, data: str | None
) -> tuple[RawSplit, RawSplit | None, RawSplit]:
    """Read train, dev (optional) and test from the resolved source."""
    d = cfg.data
    source = resolve_source(d.source, data)
    if is_hub_id(source):

        def hub(name: str, split: str | None) -> RawSplit | None:
            return (
                None
                if split is None
                else read_hub_split(name, source, split, d.text_column, d.label_column)
            )

        train, dev, test = (hub(n, s) for n, s in _HUB_SPLITS.items())
        assert train is not None and test is not None
        return train, dev, test
    root = Path(source)
    if not root.exists():
        raise DataError(
            f"data source {root} not found: pass --data DIR, set $TUNESERVE_DATA, "
            "or set data.source"
        )

    def local(name: str, file: str | None) -> RawSplit | None:
        if file is None:
            return None
        path = Path(file) if Path(file).is_absolute() else root / file
        return read_split(name, path, d.text_column, d.label_column, d.format)

    train, test = local("train", d.train), local("test", d.test)
    assert train is not None and test is not None
    return train, local("dev", d.dev), test


def choose_device(cfg: TrainingConfig) -> tuple[torch.device, str]:
    """The device and precision to train with."""
    want = cfg.train.device
    cuda = torch.cuda.is_available()
    if want == "cuda" and not cuda:
        log.warning("train.device is cuda but no GPU is visible: training on the CPU")
    device = torch.device("cuda" if cuda and want != "cpu" else "cpu")
    precision = cfg.train.precision
    if precision == "auto":
        precision = (
            ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
            if device.type == "cuda"
            else "fp32"
        )
    return device, precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fingerprint(texts: list[str], labels: list[int]) -> str:
    """Identifies a split's content, so comparisons pair the same examples."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU when used)."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def train_method(
    method: Method,
    cfg: TrainingConfig,
    ref: BaseModelRef,
    tokenizer: Any,
    data: checks.CheckedData,
    run_dir: Path,
    run_id: str,
) -> dict[str, Any]:
    """Train one method into ``run_dir`` and write its manifest last."""
    seed_everything(cfg.train.seed)
    device, precision = choose_device(cfg)
    model = build_classifier(ref, cfg.model, len(data.id2label))
    targets: list[str] = []
    if method == "lora":
        targets = add_lora(model, cfg.lora, cfg.train.seed)
    else:
        freeze_encoder(model)
    model.to(device)
    counts = parameter_counts(model)
    log.info(
        "%s: %d trainable of %d parameters (%.2f%%) on %s, %s",
        method,
        counts["trainable"],
        counts["total"],
        counts["trainable_percent"],
        device,
        precision,
    )

    max_len, pad = cfg.model.max_length, tokenizer.pad_token_id
    enc = {
        s.name: encode_texts(tokenizer, s.texts, max_len) for s in (data.train, data.dev, data.test)
    }
    optim = cfg.lora if method == "lora" else cfg.head

    def evaluate_dev() -> dict[str, float]:
        probs = predict_proba(model, enc["dev"], cfg.train.eval_batch_size, pad, device, precision)
        return headline(
            classification_metrics(data.dev.labels, probs.argmax(1).tolist(), data.id2label)
        )

    result = train_loop(
        model,
        enc["train"],
        data.train.labels,
        evaluate_dev,
        optim,
        cfg.train,
        pad,
        device,
        precision,
    )
    probs = predict_proba(model, enc["test"], cfg.train.eval_batch_size, pad, device, precision)
    preds = probs.argmax(1).tolist()
    test_metrics = classification_metrics(data.test.labels, preds, data.id2label)
    train_only = max(result.seconds - result.eval_seconds, 1e-9)
    speed = {
        "wall_seconds": round(result.seconds, 2),
        "dev_eval_seconds": round(result.eval_seconds, 2),
        "examples_seen": result.examples_seen,
        "examples_per_second": round(result.examples_seen / train_only, 2),
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "best_step": result.best_step,
        "device": str(device),
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        **peak_memory_mb(device),
    }
    metrics = {
        "test": test_metrics,
        "dev_best": result.best_metrics,
        "training": speed,
        "parameters": counts,
    }

    artifacts = {
        "head": HEAD_FILE,
        "metrics": "metrics.json",
        "training_log": "training_log.json",
        "data_report": "data_report.json",
        "curves": "curves.png",
        "test_predictions": "test_predictions.jsonl",
    }
    save_head(model, run_dir / HEAD_FILE)
    if method == "lora":
        save_adapter(model, run_dir / ADAPTER_DIR, ref.name)
        for name in sorted(os.listdir(run_dir / ADAPTER_DIR)):
            artifacts[f"adapter/{name}"] = f"{ADAPTER_DIR}/{name}"
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    for name in sorted(os.listdir(run_dir / "tokenizer")):
        artifacts[f"tokenizer/{name}"] = f"tokenizer/{name}"
    (run_dir / "eval").mkdir()
    for split in (data.dev, data.test):
        write_examples(run_dir / "eval" / f"{split.name}.jsonl", split.texts, split.labels)
        artifacts[f"eval_{split.name}"] = f"eval/{split.name}.jsonl"
    _dump(run_dir / "metrics.json", metrics)
    _dump(run_dir / "training_log.json", result.log)
    _dump(run_dir / "data_report.json", data.report)
    with open(run_dir / "test_predictions.jsonl", "w", encoding="utf-8") as handle:
        for i, (label, pred) in enumerate(zip(data.test.labels, preds, strict=True)):
            handle.write(
                json.dumps(
                    {
                        "index": i,
                        "label": label,
                        "pred": pred,
                        "scores": [round(float(p), 6) for p in probs[i]],
                    }
                )
                + "\n"
            )
    plot_curves(
        result.log,
        cfg.train.select_metric,
        run_dir / "curves.png",
        f"{run_id}: {method} on {ref.name}",
    )

    details = {
        "method": method,
        "base_model": {"name": ref.name, "source": ref.source, "fingerprint": ref.fingerprint()},
        "model": {
            "pooling": cfg.model.pooling,
            "max_length": max_len,
            "num_labels": len(data.id2label),
            "hidden_size": model.classifier.in_features,
            "head_file": HEAD_FILE,
            "adapter_dir": ADAPTER_DIR if method == "lora" else None,
            "lora_targets": targets,
            "model_input_names": list(enc["test"][0])
            if enc["test"]
            else list(tokenizer.model_input_names),
        },
        "id2label": {str(i): name for i, name in data.id2label.items()},
        "label2id": {name: i for i, name in data.id2label.items()},
        "raw_labels": data.label_keys,
        "test_fingerprint": fingerprint(data.test.texts, data.test.labels),
        "data_files": data_files(data.report),
    }
    effective = cfg.model_copy(update={"method": method}).model_dump(mode="json")
    manifest = build_manifest(
        stage="train",
        run_id=run_id,
        run_dir=run_dir,
        config=effective,
        artifacts=artifacts,
        metrics={"test_" + k: v for k, v in headline(test_metrics).items()}
        | {
            "examples_per_second": speed["examples_per_second"],
            "trainable_percent": counts["trainable_percent"],
        },
        libraries=LIBRARIES,
        details=details,
    )
    write_manifest(run_dir, manifest)
    return metrics


def data_files(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each split's source file and its sha256 (hub splits carry their id only)."""
    files = {}
    for name, stats in report["splits"].items():
        source = stats.get("source", "")
        if Path(source).is_file():
            files[name] = {"path": source, "sha256": sha256_file(source)}
        elif source:
            files[name] = {"path": source}
    return files


def write_examples(path: Path, texts: list[str], labels: list[int]) -> None:
    """The cleaned split as JSON lines (text, label id): later stages evaluate on exactly it."""
    with open(path, "w", encoding="utf-8") as handle:
        for text, label in zip(texts, labels, strict=True):
            handle.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")


def _dump(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def prepare_data(
    cfg: TrainingConfig, data: str | None, ref: BaseModelRef, tokenizer: Any
) -> checks.CheckedData:
    """Read the splits and run the data checks, printing the summary."""
    train, dev, test = read_raw_splits(cfg, data)
    checked = checks.check_data(
        cfg.data,
        train,
        dev,
        test,
        checks.token_lengths_from(tokenizer),
        cfg.model.max_length,
        cfg.train.seed,
    )
    print("\n".join(checks.summary_lines(checked.report)))
    return checked


def run_train(
    cfg: TrainingConfig,
    *,
    data: str | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Train every configured method; with both, write the comparison too. Returns run dirs."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    ref = resolve_base_model(cfg.model.base)
    check_base_model(ref)
    tokenizer = load_tokenizer(ref)
    checked = prepare_data(cfg, data, ref, tokenizer)
    run_id = run_id or default_run_id()
    root = Path(cfg.output.root) / "train"
    done: list[Path] = []
    for method in cfg.methods():
        name = f"{run_id}-{method}"
        started = time.perf_counter()
        with run_directory(root, name, overwrite=overwrite) as staging:
            metrics = train_method(method, cfg, ref, tokenizer, checked, staging, name)
        done.append(root / name)
        test = metrics["test"]
        print(
            f"{method}: test accuracy {test['accuracy']:.4f}, macro F1 {test['f1_macro']:.4f}"
            f" ({time.perf_counter() - started:.0f} s) -> {root / name}"
        )
    if len(done) == 2:
        write_comparison(done[0], done[1], Path(cfg.output.root) / "compare", run_id, overwrite)
    return done


def write_comparison(
    run_a: Path, run_b: Path, root: Path, run_id: str, overwrite: bool = False
) -> Path:
    """Compare two runs into ROOT/run_id/ (compare.json, compare.md, manifest) and print it."""
    result = compare.compare_runs(run_a, run_b)
    markdown = compare.to_markdown(result)
    with run_directory(root, run_id, overwrite=overwrite) as staging:
        _dump(staging / "compare.json", result)
        (staging / "compare.md").write_text(markdown, encoding="utf-8")
        manifest = build_manifest(
            stage="compare",
            run_id=run_id,
            run_dir=staging,
            config={},
            artifacts={"compare_json": "compare.json", "compare_md": "compare.md"},
            inputs=[input_entry("run_a", run_a), input_entry("run_b", run_b)],
            metrics={"mcnemar_p": result["mcnemar"]["p_value"]},
            libraries=("scipy",),
        )
        write_manifest(staging, manifest)
    print(markdown)
    print(f"comparison -> {root / run_id}")
    return root / run_id
