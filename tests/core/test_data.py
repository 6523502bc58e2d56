from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneserve.data import detect_format, read_hub_split, read_split, resolve_source
from tuneserve.errors import DataError

ROWS = [("a fine film", 1), ('he said "no"', 0), ("dull, slow", 0)]


def _write(path: Path, fmt: str) -> Path:
    if fmt == "tsv":
        path.write_text("text\tlab\n" + "".join(f"{t}\t{lab}\n" for t, lab in ROWS))
    elif fmt == "csv":
        import csv

        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "lab"])
            writer.writerows(ROWS)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "lab": lab}) + "\n" for t, lab in ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(
            pa.table({"text": [t for t, _ in ROWS], "lab": [lab for _, lab in ROWS]}), path
        )
    return path


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "parquet"])
def test_formats_read_the_same_rows(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / f"d.{fmt}", fmt)
    split = read_split("train", path, "text", "lab")
    assert split.texts == [t for t, _ in ROWS]
    assert [str(x) for x in split.labels] == ["1", "0", "0"]


def test_missing_column_names_the_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", "tsv")
    with pytest.raises(DataError, match=r"has no column 'sentence' \(columns: text, lab\)"):
        read_split("train", path, "sentence", "lab")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train split file .* not found"):
        read_split("train", tmp_path / "nope.tsv", "text", "lab")


def test_bad_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "lab": 1}\n{broken\n')
    with pytest.raises(DataError, match="is not valid jsonl: line 2"):
        read_split("train", path, "text", "lab")


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="set data.format"):
        detect_format(tmp_path / "d.xlsx")


def test_source_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNESERVE_DATA", raising=False)
    assert resolve_source("cfg") == "cfg"
    monkeypatch.setenv("TUNESERVE_DATA", "env")
    assert resolve_source("cfg") == "env"
    assert resolve_source("cfg", "cli") == "cli"


def test_hub_dataset_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="offline .*pass a local directory with --data"):
        read_hub_split("train", "hub:nyu-mll/glue:sst2", "train", "sentence", "label")
