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
from training.distill import (
    Teacher,
    agreement,
    build_student,
    distill_info,
    distill_loss,
    teacher_for,
)
from training.distributed import SINGLE, World
from training.loop import Encoded, LossFn, TrainResult, encode_texts, predict_proba, train_loop
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
from training.splits import prepare_data, read_raw_splits  # noqa: F401  (importable from here)
from tuneserve.details import CompareDetails
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


def default_run_id() -> str:
    """A sortable, readable run id: UTC time to the second."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def build_model(
    method: Method, cfg: TrainingConfig, ref: BaseModelRef, num_labels: int, device: torch.device
) -> tuple[TextClassifier, list[str]]:
    """The classifier of ``method`` on ``device``: LoRA adapters, a frozen encoder or a student
    (the first distill.layers layers, all trained), and the LoRA target modules (or none)."""
    if method == "distill":
        return build_student(ref, cfg.model, cfg.distill, num_labels).to(device), []
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
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train with early stopping on the dev split; the best state is left in ``model``
    (on rank 0, which alone evaluates dev)."""

    def evaluate_dev() -> dict[str, float]:
        probs = predict_proba(model, enc["dev"], cfg.train.eval_batch_size, pad, device, precision)
        return headline(
            classification_metrics(data.dev.labels, probs.argmax(1).tolist(), data.id2label)
        )

    optim = {"head": cfg.head, "lora": cfg.lora, "distill": cfg.distill}[method]
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
        loss_fn,
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
    teacher: Teacher | None = None,
    heldout: checks.Split | None = None,
) -> dict[str, Any] | None:
    """Train one method into ``run_dir`` and write its manifest last. With several ranks only
    rank 0 (given ``run_dir``) evaluates and writes; the others train and return None.
    A student learns from ``teacher``; ``heldout`` (a cross-validation fold) is evaluated too."""
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
    loss_fn = None
    if method == "distill":
        if teacher is None:
            raise ValueError("a distill run needs its teacher")
        soft = teacher.logits_for(data.train.texts)
        loss_fn = distill_loss(soft, data.train.labels, cfg.distill, device)
    result = fit(method, cfg, model, data, enc, pad, device, precision, world, loss_fn)
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
    if heldout is not None:
        held = encode_texts(tokenizer, heldout.texts, max_len)
        held_probs = predict_proba(model, held, cfg.train.eval_batch_size, pad, device, precision)
        metrics["heldout"] = classification_metrics(
            heldout.labels, held_probs.argmax(1).tolist(), data.id2label
        )
    if teacher is not None:
        metrics["teacher_test_agreement"] = agreement(teacher.logits_for(data.test.texts), probs)
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
    info = distill_info(teacher, cfg.distill, ref) if teacher is not None else None
    details = outputs.train_details(
        method, cfg, ref, model, data, targets, input_names, world, info
    )
    manifest = build_manifest(
        run_id=run_id,
        run_dir=run_dir,
        config=cfg.model_copy(update={"method": method}).model_dump(mode="json"),
        artifacts=artifacts,
        inputs=[input_entry("teacher_run", teacher.run_dir)] if teacher is not None else [],
        metrics={"test_" + k: v for k, v in headline(test_metrics).items()}
        | {"heldout_" + k: v for k, v in headline(metrics.get("heldout", {})).items()}
        | {
            "examples_per_second": speed["examples_per_second"],
            "trainable_percent": counts["trainable_percent"],
        },
        libraries=LIBRARIES,
        details=details,
    )
    write_manifest(run_dir, manifest)
    return metrics


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
    teacher = teacher_for(cfg, checked, world)
    done: list[Path] = []
    for method in cfg.methods():
        name = f"{run_id}-{method}"
        started = time.perf_counter()
        if not world.is_main:
            train_method(method, cfg, ref, tokenizer, checked, None, name, world, teacher)
            continue
        with run_directory(root, name, overwrite=overwrite) as staging:
            metrics = train_method(
                method, cfg, ref, tokenizer, checked, staging, name, world, teacher
            )
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
