"""Dataset reading: TSV, CSV, JSONL or Parquet with configurable columns, or a hub dataset."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneserve.errors import DataError

FORMATS = ("tsv", "csv", "jsonl", "parquet")
DATA_ENV = "TUNESERVE_DATA"
HUB_PREFIX = "hub:"


@dataclass(frozen=True)
class RawSplit:
    """Texts and raw labels (str or int) of one split, as read; no cleaning yet."""

    name: str
    texts: list[Any]
    labels: list[Any]
    origin: str

    def __len__(self) -> int:
        return len(self.texts)


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The file format named in the config, or guessed from the suffix."""
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    guessed = {
        "tsv": "tsv",
        "tab": "tsv",
        "csv": "csv",
        "jsonl": "jsonl",
        "json": "jsonl",
        "parquet": "parquet",
        "pq": "parquet",
    }.get(suffix)
    if guessed is None:
        raise DataError(
            f"cannot tell the format of {path} from its suffix: set data.format to one of "
            + ", ".join(FORMATS)
        )
    return guessed


def read_split(
    name: str,
    path: Path,
    text_column: str,
    label_column: str,
    fmt: str = "auto",
    hint: str = "set data.text_column / data.label_column",
) -> RawSplit:
    """Read one split from a local file, checking that both columns exist (``hint``: the fix)."""
    if not path.is_file():
        raise DataError(f"{name} split file {path} not found: check data.source and data.{name}")
    fmt = detect_format(path, fmt)
    try:
        rows, columns = _READERS[fmt](path)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise DataError(f"{name} split file {path} is not valid {fmt}: {exc}") from exc
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise DataError(
            f"{name} split file {path} has no column {missing[0]!r} (columns: "
            f"{', '.join(map(str, columns)) or 'none'}): {hint}"
        )
    return RawSplit(
        name=name,
        texts=[row.get(text_column) for row in rows],
        labels=[row.get(label_column) for row in rows],
        origin=str(path),
    )


def _read_delimited(path: Path, delimiter: str) -> tuple[list[dict[str, Any]], list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        # TSV files such as GLUE's are written without quoting; quotes are part of the text.
        if delimiter == "\t":
            reader = csv.DictReader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(handle, delimiter=delimiter)
        rows = list(reader)
        return rows, list(reader.fieldnames or [])


def _read_tsv(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    return _read_delimited(path, "\t")


def _read_csv(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    return _read_delimited(path, ",")


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number}: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"line {number}: expected a JSON object")
            rows.append(row)
            columns.update(dict.fromkeys(row))
    return rows, list(columns)


def _read_parquet(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the train extra
        raise DataError("reading Parquet needs pyarrow: pip install 'tuneserve[train]'") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own hierarchy
        raise ValueError(str(exc)) from exc
    return table.to_pylist(), list(table.column_names)


_READERS = {"tsv": _read_tsv, "csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}


def is_hub_id(source: str) -> bool:
    """A source ``hub:name[:subset]`` (such as ``hub:nyu-mll/glue:sst2``) names a hub dataset."""
    return source.startswith(HUB_PREFIX)


def resolve_source(configured: str, cli_value: str | None = None) -> str:
    """Where the data comes from: ``--data``, then $TUNESERVE_DATA, then the config's source."""
    return cli_value or os.environ.get(DATA_ENV) or configured


def read_hub_split(
    name: str, hub_id: str, split: str, text_column: str, label_column: str
) -> RawSplit:
    """Read a split of a hub dataset (online users only; needs the `datasets` package)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(
            f"data source {hub_id!r} is a hub dataset but this machine is offline "
            "(HF_HUB_OFFLINE=1): pass a local directory with --data or $TUNESERVE_DATA"
        )
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"data source {hub_id!r} is a hub dataset, which needs the `datasets` package "
            "and network access: pip install datasets, or pass a local directory with --data"
        ) from exc
    path, _, subset = hub_id.removeprefix(HUB_PREFIX).partition(":")
    try:
        ds = datasets.load_dataset(path, subset or None, split=split)
    except Exception as exc:  # network and hub errors come in many types
        raise DataError(
            f"could not load {hub_id!r} split {split!r} from the hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass a local directory with --data"
        ) from exc
    for column in (text_column, label_column):
        if column not in ds.column_names:
            raise DataError(f"hub dataset {hub_id!r} has no column {column!r}")
    return RawSplit(name, list(ds[text_column]), list(ds[label_column]), f"{hub_id}:{split}")
