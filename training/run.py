"""`tuneserve train`: read and check the data, train each method, write the run directories."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import torch

from training import checks, compare, distributed, outputs
from training.config import Method, TrainingConfig
from training.curves import plot_curves
from training.device import choose_device, seed_everything, speed_figures
from training.distributed import SINGLE, World
from training.loop import Encoded, TrainResult, encode_texts, predict_proba, train_loop
from training.metrics import classification_metrics, headline
from training.model import (
    TextClassifier,
    add_lora,
    build_classifier,
    check_base_model,
    freeze_encoder,
    load_tokenizer,
    parameter_counts,
)
from tuneserve.data import RawSplit, is_hub_id, read_hub_split, read_split, resolve_source
from tuneserve.details import CompareDetails
from tuneserve.errors import DataError
from tuneserve.manifest import (
    build_manifest,
    input_entry,
    run_directory,
    write_json_atomic,
    write_manifest,
)
from tuneserve.models import BaseModelRef, resolve_base_model

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "transformers", "peft", "tokenizers", "safetensors", "numpy")
_HUB_SPLITS = {"train": "train", "test": "validation"}


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

        def hub(name: str) -> RawSplit:
            return read_hub_split(name, source, _HUB_SPLITS[name], d.text_column, d.label_column)

        # the hub's GLUE-style datasets have no labelled dev split: it is carved from train
        return hub("train"), None, hub("test")
    root = Path(source)
    if not root.exists():
        raise DataError(
            f"data source {root} not found: pass --data DIR, set $TUNESERVE_DATA, "
            "or set data.source"
        )

    def local(name: str, file: str) -> RawSplit:
        path = Path(file) if Path(file).is_absolute() else root / file
        return read_split(name, path, d.text_column, d.label_column, d.format)

    train, test = local("train", d.train), local("test", d.test)
    return train, None if d.dev is None else local("dev", d.dev), test


def build_model(
    method: Method, cfg: TrainingConfig, ref: BaseModelRef, num_labels: int, device: torch.device
) -> tuple[TextClassifier, list[str]]:
    """The classifier of ``method`` on ``device``: LoRA adapters or a frozen encoder, and the
    LoRA target modules (none for the head-only baseline)."""
    model = build_classifier(ref, cfg.model, num_labels)
    targets: list[str] = []
    if method == "lora":
        targets = add_lora(model, cfg.lora, cfg.train.seed)
    else:
        freeze_encoder(model)
    model.to(device)
    return model, targets


def fit(
    method: Method,
    cfg: TrainingConfig,
    model: TextClassifier,
    data: checks.CheckedData,
    enc: dict[str, Encoded],
    pad: int,
    device: torch.device,
    precision: str,
    world: World = SINGLE,
) -> TrainResult:
    """Train with early stopping on the dev split; the best state is left in ``model``
    (on rank 0, which alone evaluates dev)."""

    def evaluate_dev() -> dict[str, float]:
        probs = predict_proba(model, enc["dev"], cfg.train.eval_batch_size, pad, device, precision)
        return headline(
            classification_metrics(data.dev.labels, probs.argmax(1).tolist(), data.id2label)
        )

    optim = cfg.lora if method == "lora" else cfg.head
    return train_loop(
        model,
        enc["train"],
        data.train.labels,
        evaluate_dev,
        optim,
        cfg.train,
        pad,
        device,
        precision,
        world,
    )


def train_method(
    method: Method,
    cfg: TrainingConfig,
    ref: BaseModelRef,
    tokenizer: Any,
    data: checks.CheckedData,
    run_dir: Path | None,
    run_id: str,
    world: World = SINGLE,
) -> dict[str, Any] | None:
    """Train one method into ``run_dir`` and write its manifest last. With several ranks only
    rank 0 (given ``run_dir``) evaluates and writes; the others train and return None."""
    seed_everything(cfg.train.seed)
    device, precision = choose_device(cfg, world)
    model, targets = build_model(method, cfg, ref, len(data.id2label), device)
    if world.distributed:  # same initial weights and batches, but each rank its own dropout
        torch.manual_seed(cfg.train.seed + world.rank)
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
    result = fit(method, cfg, model, data, enc, pad, device, precision, world)
    if run_dir is None:
        return None

    probs = predict_proba(model, enc["test"], cfg.train.eval_batch_size, pad, device, precision)
    dev_probs = predict_proba(model, enc["dev"], cfg.train.eval_batch_size, pad, device, precision)
    test_metrics = classification_metrics(data.test.labels, probs.argmax(1).tolist(), data.id2label)
    speed = speed_figures(result, device, precision, world)
    metrics = {
        "test": test_metrics,
        "dev_best": result.best_metrics,
        "training": speed,
        "parameters": counts,
    }
    artifacts = outputs.write_outputs(
        run_dir, method, model, ref, tokenizer, data, metrics, result.log, probs, dev_probs
    )
    plot_curves(
        result.log,
        cfg.train.select_metric,
        run_dir / "curves.png",
        f"{run_id}: {method} on {ref.name}",
    )
    input_names = list(enc["test"][0]) if enc["test"] else list(tokenizer.model_input_names)
    details = outputs.train_details(method, cfg, ref, model, data, targets, input_names, world)
    manifest = build_manifest(
        run_id=run_id,
        run_dir=run_dir,
        config=cfg.model_copy(update={"method": method}).model_dump(mode="json"),
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


def prepare_data(
    cfg: TrainingConfig, data: str | None, ref: BaseModelRef, tokenizer: Any, show: bool = True
) -> checks.CheckedData:
    """Read the splits and run the data checks, printing the summary when ``show``."""
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
    if show:
        print("\n".join(checks.summary_lines(checked.report)))
    return checked


def run_train(
    cfg: TrainingConfig,
    *,
    data: str | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Train every configured method; with both, write the comparison too. Returns run dirs.

    Launched as several processes (torchrun, or `tuneserve train --nproc N`), every rank runs
    this with the same config and the same run id; rank 0 alone writes, the others return [].
    """
    world = distributed.init_world(cfg.train.device)
    with distributed.rank_errors(world):
        done = train_all(cfg, world, data, run_id, overwrite)
    distributed.close_world(world)
    return done


def train_all(
    cfg: TrainingConfig, world: World, data: str | None, run_id: str | None, overwrite: bool
) -> list[Path]:
    """Every method of ``cfg`` (and the comparison) on this rank."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    elif world.distributed:  # processes on one machine share its cores
        torch.set_num_threads(distributed.threads_per_process(world))
    ref = resolve_base_model(cfg.model.base)
    check_base_model(ref)
    tokenizer = load_tokenizer(ref)
    checked = prepare_data(cfg, data, ref, tokenizer, show=world.is_main)
    run_id = run_id or distributed.run_id_from_main(default_run_id(), world)
    root = Path(cfg.output.root) / "train"
    done: list[Path] = []
    for method in cfg.methods():
        name = f"{run_id}-{method}"
        started = time.perf_counter()
        if not world.is_main:
            train_method(method, cfg, ref, tokenizer, checked, None, name, world)
            continue
        with run_directory(root, name, overwrite=overwrite) as staging:
            metrics = train_method(method, cfg, ref, tokenizer, checked, staging, name, world)
        done.append(root / name)
        test = cast(dict[str, Any], metrics)["test"]  # rank 0 always evaluates
        print(
            f"{method}: test accuracy {test['accuracy']:.4f}, macro F1 {test['f1_macro']:.4f}"
            f" ({time.perf_counter() - started:.0f} s) -> {root / name}"
        )
    if len(done) == 2:
        write_comparison(done[0], done[1], Path(cfg.output.root) / "compare", run_id, overwrite)
    return done


def write_comparison(
    run_a: Path, run_b: Path, root: Path, run_id: str, overwrite: bool = False, **options: Any
) -> Path:
    """Compare two runs into ROOT/run_id/ (compare.json, compare.md, manifest) and print it;
    ``options`` go to compare.compare_runs (alpha, exports, benches)."""
    result = compare.compare_runs(run_a, run_b, **options)
    markdown = compare.to_markdown(result)
    exports = [
        input_entry(f"export_{side}", Path(result["costs"][side]["export"]))
        for side in ("a", "b")
        if result["costs"][side]["export"]
    ]
    with run_directory(root, run_id, overwrite=overwrite) as staging:
        write_json_atomic(staging / "compare.json", result)
        (staging / "compare.md").write_text(markdown, encoding="utf-8")
        details = CompareDetails(
            run_a=result["a"]["run_id"],
            run_b=result["b"]["run_id"],
            method_a=result["a"]["method"],
            method_b=result["b"]["method"],
            test_examples=result["test_examples"],
        )
        manifest = build_manifest(
            run_id=run_id,
            run_dir=staging,
            config={},
            artifacts={"compare_json": "compare.json", "compare_md": "compare.md"},
            inputs=[input_entry("run_a", run_a), input_entry("run_b", run_b), *exports],
            metrics={
                "mcnemar_p": result["mcnemar"]["p_value"],
                "alpha": result["alpha"],
                "significant": result["significant"],
                "accuracy_change": result["deltas"]["accuracy"]["delta"],
            },
            libraries=("scipy",),
            details=details,
        )
        write_manifest(staging, manifest)
    print(markdown)
    print(f"comparison -> {root / run_id}")
    return root / run_id
