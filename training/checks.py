"""Data checks before training: cleaning, conflicts, duplicates, lengths, balance and leakage."""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.config import DataConfig
from tuneserve.data import RawSplit
from tuneserve.errors import DataError

log = logging.getLogger(__name__)

TokenLengths = Callable[[list[str]], list[int]]
_EXAMPLES = 3


@dataclass
class Split:
    """A cleaned split: texts and label ids."""

    name: str
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class CheckedData:
    """The cleaned splits, the label map, and the report of what the checks found."""

    train: Split
    dev: Split
    test: Split
    label_keys: list[str]  # raw label (as str) per id
    id2label: dict[int, str]
    report: dict[str, Any] = field(default_factory=dict)


def label_key(value: Any) -> str | None:
    """Normalise a raw label: ints and digit strings compare equal; blanks are missing."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(int(value))
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    text = str(value).strip()
    return text or None


def _sort_keys(keys: set[str]) -> list[str]:
    def numeric(k: str) -> bool:
        return k.lstrip("-").isdigit()

    return sorted(keys, key=int) if all(map(numeric, keys)) else sorted(keys)


def clean_split(raw: RawSplit) -> tuple[list[str], list[str], dict[str, Any]]:
    """Drop empty texts and missing labels, exclude conflicting texts, remove exact duplicates."""
    stats: dict[str, Any] = {"source": raw.origin, "rows_read": len(raw)}
    texts, keys = [], []
    empty = missing = 0
    for text, label in zip(raw.texts, raw.labels, strict=True):
        if not isinstance(text, str) or not text.strip():
            empty += 1
            continue
        key = label_key(label)
        if key is None:
            missing += 1
            continue
        texts.append(text)
        keys.append(key)
    labels_by_text: dict[str, set[str]] = defaultdict(set)
    for text, key in zip(texts, keys, strict=True):
        labels_by_text[text].add(key)
    conflicting = {t for t, ks in labels_by_text.items() if len(ks) > 1}
    seen: set[tuple[str, str]] = set()
    kept_texts, kept_keys = [], []
    duplicates = conflict_rows = 0
    for text, key in zip(texts, keys, strict=True):
        if text in conflicting:
            conflict_rows += 1
        elif (text, key) in seen:
            duplicates += 1
        else:
            seen.add((text, key))
            kept_texts.append(text)
            kept_keys.append(key)
    stats.update(
        empty_dropped=empty,
        missing_label_dropped=missing,
        conflicting_texts=len(conflicting),
        conflicting_rows_dropped=conflict_rows,
        conflict_examples=[
            {"text": t[:80], "labels": sorted(labels_by_text[t])}
            for t in sorted(conflicting)[:_EXAMPLES]
        ],
        duplicates_dropped=duplicates,
    )
    return kept_texts, kept_keys, stats


def stratified_holdout(
    texts: list[str], keys: list[str], fraction: float, seed: int
) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """Split off ``fraction`` of each label's rows with a fixed seed: (kept, held_out)."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        by_label[key].append(index)
    held: set[int] = set()
    for indices in by_label.values():
        rng.shuffle(indices)
        held.update(indices[: max(1, round(len(indices) * fraction))] if len(indices) > 1 else [])
    kept = [i for i in range(len(texts)) if i not in held]
    out = sorted(held)
    return ([texts[i] for i in kept], [keys[i] for i in kept]), (
        [texts[i] for i in out],
        [keys[i] for i in out],
    )


def _subset(
    texts: list[str], keys: list[str], limit: int, seed: int
) -> tuple[list[str], list[str]]:
    if not limit or len(texts) <= limit:
        return texts, keys
    chosen = sorted(random.Random(seed).sample(range(len(texts)), limit))
    return [texts[i] for i in chosen], [keys[i] for i in chosen]


def check_data(
    cfg: DataConfig,
    train: RawSplit,
    dev: RawSplit | None,
    test: RawSplit,
    token_lengths: TokenLengths,
    max_length: int,
    seed: int,
) -> CheckedData:
    """Run every check, raise DataError on unusable data, and return the cleaned splits."""
    report: dict[str, Any] = {"splits": {}, "warnings": []}
    warnings: list[str] = report["warnings"]
    cleaned = {}
    for raw in (train, dev, test):
        if raw is None:
            continue
        texts, keys, stats = clean_split(raw)
        report["splits"][raw.name] = stats
        cleaned[raw.name] = (texts, keys)
        if stats["conflicting_texts"]:
            warnings.append(
                f"{raw.name}: {stats['conflicting_texts']} texts carry conflicting "
                f"labels; their {stats['conflicting_rows_dropped']} rows were excluded"
            )
    if dev is None:
        cleaned["train"], cleaned["dev"] = stratified_holdout(
            *cleaned["train"], cfg.dev_fraction, seed
        )
        report["dev_source"] = f"held out from train: {cfg.dev_fraction:.0%} per label, seed {seed}"
        report["splits"]["dev"] = {"source": report["dev_source"]}
    else:
        report["dev_source"] = dev.origin

    train_labels = set(cleaned["train"][1])
    if not cleaned["train"][0]:
        raise DataError(
            f"train split {train.origin} is empty after cleaning (all rows were empty,"
            " unlabelled or conflicting): check data.text_column and the file"
        )
    for name in ("dev", "test"):
        texts, keys = cleaned[name]
        if not texts:
            raise DataError(f"{name} split is empty after cleaning: check the {name} file")
        unknown = Counter(k for k in keys if k not in train_labels)
        if unknown:
            label, rows = unknown.most_common(1)[0]
            raise DataError(
                f"{name} split has label {label!r} ({rows} rows) that the train split lacks "
                f"(train labels: {', '.join(_sort_keys(train_labels))}): fix the labels or the "
                "label column"
            )
    if len(train_labels) < 2:
        raise DataError(
            f"train split has a single label {next(iter(train_labels))!r}: a "
            "classifier needs at least two"
        )

    report["leakage"] = _leakage(cleaned, cfg.drop_leaked, warnings)
    if cfg.drop_leaked and report["leakage"]["dropped_from_train"]:
        eval_texts = set(cleaned["dev"][0]) | set(cleaned["test"][0])
        pairs = [(t, k) for t, k in zip(*cleaned["train"], strict=True) if t not in eval_texts]
        cleaned["train"] = ([t for t, _ in pairs], [k for _, k in pairs])

    limits = {
        "train": cfg.max_train_examples,
        "dev": cfg.max_dev_examples,
        "test": cfg.max_test_examples,
    }
    for name, limit in limits.items():
        before = len(cleaned[name][0])
        cleaned[name] = _subset(*cleaned[name], limit, seed)
        if len(cleaned[name][0]) < before:
            report["splits"][name]["subset_to"] = len(cleaned[name][0])

    label_keys = _sort_keys(train_labels)
    id_of = {key: i for i, key in enumerate(label_keys)}
    id2label = {i: cfg.label_names.get(key, key) for i, key in enumerate(label_keys)}
    splits = {}
    for name, (texts, keys) in cleaned.items():
        stats = report["splits"][name]
        counts = Counter(keys)
        stats["rows_kept"] = len(texts)
        stats["label_counts"] = {id2label[id_of[k]]: counts.get(k, 0) for k in label_keys}
        present = [c for c in stats["label_counts"].values() if c]
        ratio = max(present) / min(present)
        stats["imbalance_ratio"] = round(ratio, 3)
        if ratio > cfg.imbalance_ratio:
            warnings.append(
                f"{name}: label imbalance {ratio:.2f}:1 exceeds "
                f"{cfg.imbalance_ratio}:1 ({stats['label_counts']})"
            )
        truncated = sum(n > max_length for n in token_lengths(texts))
        stats["longer_than_max_length"] = truncated
        if truncated:
            warnings.append(
                f"{name}: {truncated} texts are longer than {max_length} tokens and "
                "will be truncated"
            )
        splits[name] = Split(name, texts, [id_of[k] for k in keys])
    report["labels"] = {str(i): {"name": id2label[i], "raw": k} for i, k in enumerate(label_keys)}
    for warning in warnings:
        log.warning("data check: %s", warning)
    return CheckedData(splits["train"], splits["dev"], splits["test"], label_keys, id2label, report)


def _leakage(
    cleaned: dict[str, tuple[list[str], list[str]]], drop: bool, warnings: list[str]
) -> dict[str, int]:
    sets = {name: set(texts) for name, (texts, _) in cleaned.items()}
    leak = {
        "train_dev": len(sets["train"] & sets["dev"]),
        "train_test": len(sets["train"] & sets["test"]),
        "dev_test": len(sets["dev"] & sets["test"]),
    }
    leaked_train = len(sets["train"] & (sets["dev"] | sets["test"]))
    leak["dropped_from_train"] = leaked_train if drop else 0
    for pair, count in leak.items():
        if pair != "dropped_from_train" and count:
            a, b = pair.split("_")
            warnings.append(
                f"leakage: {count} texts occur in both {a} and {b}"
                + (
                    ""
                    if drop or a != "train"
                    else " (set data.drop_leaked = true to remove them from train)"
                )
            )
    return leak


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short table of the data report for the terminal."""
    lines = [
        f"{'split':<6} {'read':>7} {'kept':>7} {'empty':>6} {'dupes':>6} {'confl':>6} "
        f"{'>max':>5}  labels"
    ]
    for name in ("train", "dev", "test"):
        s = report["splits"].get(name, {})
        lines.append(
            f"{name:<6} {s.get('rows_read', '-')!s:>7} {s.get('rows_kept', 0):>7} "
            f"{s.get('empty_dropped', '-')!s:>6} {s.get('duplicates_dropped', '-')!s:>6} "
            f"{s.get('conflicting_rows_dropped', '-')!s:>6} {s.get('longer_than_max_length', 0):>5}"
            f"  {s.get('label_counts', {})}"
        )
    return lines


def token_lengths_from(tokenizer: Any) -> TokenLengths:
    """Token counts (special tokens included, no truncation) from a Hugging Face tokenizer."""

    def lengths(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return [len(x) for x in ids]

    return lengths
