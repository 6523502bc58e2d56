"""K-fold cross-validation: K train runs on stratified folds of train, and their summary."""

from __future__ import annotations

import copy
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training import checks
from training.config import TrainingConfig
from training.distill import teacher_for
from training.distributed import SINGLE, world_from_env
from training.model import check_base_model, load_tokenizer
from training.run import default_run_id, train_method
from training.splits import prepare_data
from tuneserve.details import CVDetails
from tuneserve.errors import ConfigError, DataError
from tuneserve.manifest import (
    build_manifest,
    input_entry,
    run_directory,
    write_json_atomic,
    write_manifest,
)
from tuneserve.models import resolve_base_model

#: what each fold's figures are measured on (the README says the same)
EVALUATED_ON = "the held-out fold; early stopping and the best checkpoint on the configured dev"
HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro")
LIBRARIES = ("torch", "transformers", "peft", "numpy")


def stratified_folds(labels: Sequence[int], k: int, seed: int) -> list[list[int]]:
    """Indices of each of ``k`` folds: every label's examples shuffled (seeded) and dealt in
    turn, so each fold holds each label's share to within one example and the folds are
    disjoint and cover every index."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    folds: list[list[int]] = [[] for _ in range(k)]
    dealt = 0
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        for i, index in enumerate(indices):
            folds[(dealt + i) % k].append(index)
        dealt += len(indices)  # the next label starts where this one stopped: sizes stay even
    return [sorted(fold) for fold in folds]


def check_folds(k: int, data: checks.CheckedData) -> None:
    """K must be at least 2 and at most the smallest class count of train."""
    if k < 2:
        raise ConfigError(f"--cv must be at least 2 folds, got {k}")
    counts = Counter(data.train.labels)
    label, smallest = min(counts.items(), key=lambda item: (item[1], item[0]))
    if k > smallest:
        raise DataError(
            f"--cv {k} needs at least {k} train examples of every class, but class "
            f"{data.id2label[label]!r} has {smallest}: use --cv {max(2, smallest)} or fewer, "
            "or more data"
            if smallest >= 2
            else f"--cv {k} needs at least 2 train examples of every class, but class "
            f"{data.id2label[label]!r} has {smallest}: add examples of it"
        )


def fold_data(
    data: checks.CheckedData, held: list[int], fold: int, k: int
) -> tuple[checks.CheckedData, checks.Split]:
    """Fold ``fold``'s data (train without the held-out indices, the same dev and test) and
    its held-out split."""
    out = set(held)
    keep = [i for i in range(len(data.train)) if i not in out]
    train = checks.Split(
        "train", [data.train.texts[i] for i in keep], [data.train.labels[i] for i in keep]
    )
    heldout = checks.Split(
        "heldout", [data.train.texts[i] for i in held], [data.train.labels[i] for i in held]
    )
    report = copy.deepcopy(data.report)

    def counts(split: checks.Split) -> dict[str, int]:
        found = Counter(split.labels)
        return {data.id2label[i]: found.get(i, 0) for i in sorted(data.id2label)}

    report["cv"] = {
        "fold": fold,
        "folds": k,
        "train_rows": len(train),
        "train_label_counts": counts(train),
        "heldout_rows": len(heldout),
        "heldout_label_counts": counts(heldout),
    }
    checked = checks.CheckedData(train, data.dev, data.test, data.label_keys, data.id2label, report)
    return checked, heldout


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof 1), min, max and the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "folds": values,
    }


def summarise(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- std over the folds of the held-out figures, per-class F1 and the test figures."""
    held = [f["heldout"] for f in folds]
    test = [f["test"] for f in folds]
    labels = list(held[0]["per_class"])
    return {
        "heldout": {m: spread([h[m] for h in held]) for m in HEADLINE},
        "heldout_f1_per_class": {
            name: spread([h["per_class"][name]["f1"] for h in held]) for name in labels
        },
        "test": {m: spread([t[m] for t in test]) for m in HEADLINE},
        "dev_best": {
            m: spread([f["dev_best"][m] for f in folds])
            for m in HEADLINE
            if all(m in f["dev_best"] for f in folds)
        },
    }


def to_table(method: str, k: int, seed: int, summary: dict[str, Any]) -> str:
    """The summary as a plain-text table: mean +- std, then each fold."""
    head = f"{'metric':<24} {'mean ± std':>17}  " + " ".join(
        f"{'fold' + str(i + 1):>7}" for i in range(k)
    )
    lines = [
        f"cross-validation of {method}: {k} stratified folds, seed {seed} "
        f"(measured on {EVALUATED_ON})",
        head,
    ]
    rows = [(f"held-out {m}", summary["heldout"][m]) for m in HEADLINE]
    rows += [(f"held-out F1 {n}", s) for n, s in summary["heldout_f1_per_class"].items()]
    rows += [(f"test {m}", summary["test"][m]) for m in ("accuracy", "f1_macro")]
    for name, s in rows:
        values = " ".join(f"{v:>7.4f}" for v in s["folds"])
        lines.append(f"{name[:24]:<24} {s['mean']:>8.4f} ± {s['std']:.4f}  {values}")
    return "\n".join(lines)


def run_cv(
    cfg: TrainingConfig,
    k: int,
    *,
    data: str | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Cross-validate every configured method into ROOT/train/RUN_ID-METHOD-cvK/ (cv.json,
    cv.md, folds.json, one train run per fold, the manifest); returns those directories."""
    if world_from_env().distributed:
        raise ConfigError(
            "--cv trains its folds one after another in one process: drop --nproc (and torchrun)"
        )
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    ref = resolve_base_model(cfg.model.base)
    check_base_model(ref)
    tokenizer = load_tokenizer(ref)
    checked = prepare_data(cfg, data, ref, tokenizer)
    check_folds(k, checked)
    teacher = teacher_for(cfg, checked, SINGLE)  # its logits are computed once, then reused
    folds = stratified_folds(checked.train.labels, k, cfg.train.seed)
    run_id = run_id or default_run_id()
    root = Path(cfg.output.root) / "train"
    done = []
    for method in cfg.methods():
        name = f"{run_id}-{method}-cv{k}"
        with run_directory(root, name, overwrite=overwrite) as staging:
            results, fold_ids = [], []
            for fold, held in enumerate(folds, start=1):
                fold_id = f"{name}-fold{fold}"
                fold_checked, heldout = fold_data(checked, held, fold, k)
                (staging / fold_id).mkdir()
                print(f"fold {fold}/{k}: train {len(fold_checked.train)}, held out {len(held)}")
                metrics = train_method(
                    method, cfg, ref, tokenizer, fold_checked, staging / fold_id, fold_id,
                    SINGLE, teacher, heldout,
                )  # fmt: skip
                results.append(metrics)
                fold_ids.append(fold_id)
            summary = summarise(results)  # type: ignore[arg-type]
            table = to_table(method, k, cfg.train.seed, summary)
            write_json_atomic(
                staging / "cv.json",
                {
                    "method": method,
                    "folds": k,
                    "seed": cfg.train.seed,
                    "evaluated_on": EVALUATED_ON,
                    "std": "sample standard deviation over the folds (ddof 1)",
                    "summary": summary,
                    "fold_runs": fold_ids,
                    "fold_sizes": [len(f) for f in folds],
                    "per_fold": [
                        {"run": r, "training": m["training"], "heldout": m["heldout"]}
                        for r, m in zip(fold_ids, results, strict=True)  # type: ignore[index]
                    ],
                },
            )
            write_json_atomic(staging / "folds.json", {"train_indices_heldout": folds})
            (staging / "cv.md").write_text(f"```\n{table}\n```\n", encoding="utf-8")
            artifacts = {"cv_json": "cv.json", "cv_md": "cv.md", "folds": "folds.json"}
            artifacts |= {f"{r}/manifest": f"{r}/manifest.json" for r in fold_ids}
            details = CVDetails(
                method=method,
                folds=k,
                seed=cfg.train.seed,
                fold_runs=fold_ids,
                evaluated_on=EVALUATED_ON,
                train_examples=len(checked.train),
            )
            heldout_mean = {f"cv_{m}_mean": s["mean"] for m, s in summary["heldout"].items()} | {
                f"cv_{m}_std": s["std"] for m, s in summary["heldout"].items()
            }
            manifest = build_manifest(
                run_id=name,
                run_dir=staging,
                config=cfg.model_copy(update={"method": method}).model_dump(mode="json"),
                artifacts=artifacts,
                inputs=[input_entry("teacher_run", teacher.run_dir)] if teacher else [],
                metrics=heldout_mean,
                libraries=LIBRARIES,
                details=details,
            )
            write_manifest(staging, manifest)
        print(table)
        print(f"cross-validation -> {root / name}")
        done.append(root / name)
    return done
