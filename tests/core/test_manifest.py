from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.core.conftest import train_details
from tuneserve.errors import ManifestError
from tuneserve.manifest import (
    MANIFEST_NAME,
    build_manifest,
    read_manifest,
    run_directory,
    sha256_file,
    write_json_atomic,
    write_manifest,
)


def _finish(run_dir: Path, run_id: str = "r1", text: str = "weights") -> None:
    (run_dir / "model.bin").write_text(text)
    (run_dir / "sub").mkdir(exist_ok=True)
    (run_dir / "sub" / "a.json").write_text("{}")
    manifest = build_manifest(
        run_id=run_id,
        run_dir=run_dir,
        config={"x": 1},
        artifacts={"model": "model.bin", "extra": "sub/a.json"},
        metrics={"accuracy": 0.5},
        details=train_details(),
    )
    write_manifest(run_dir, manifest)


def test_round_trip_records_hashes(tmp_path: Path) -> None:
    with run_directory(tmp_path, "r1") as staging:
        _finish(staging)
    manifest = read_manifest(tmp_path / "r1", stage="train")
    entry = manifest.artifacts["model"]
    assert entry.sha256 == sha256_file(tmp_path / "r1" / "model.bin")
    assert entry.bytes == len("weights")
    assert manifest.run_id == "r1"
    assert manifest.code_version["tuneserve"]
    assert manifest.libraries["tuneserve"] == manifest.code_version["tuneserve"]


def test_changed_file_fails_hash_check(tmp_path: Path) -> None:
    with run_directory(tmp_path, "r1") as staging:
        _finish(staging)
    (tmp_path / "r1" / "model.bin").write_text("weightz")
    with pytest.raises(ManifestError, match=r"model \(model.bin\) does not match its recorded"):
        read_manifest(tmp_path / "r1")
    read_manifest(tmp_path / "r1", verify=False)  # explicit opt-out still reads


def test_missing_file_and_wrong_stage(tmp_path: Path) -> None:
    with run_directory(tmp_path, "r1") as staging:
        _finish(staging)
    with pytest.raises(ManifestError, match="is a 'train' run, expected a 'export' run"):
        read_manifest(tmp_path / "r1", stage="export")
    (tmp_path / "r1" / "sub" / "a.json").unlink()
    with pytest.raises(ManifestError, match=r"extra \(sub/a.json\) is missing"):
        read_manifest(tmp_path / "r1")


def test_directory_without_manifest_is_unfinished(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(ManifestError, match="has no manifest.json: the run did not finish"):
        read_manifest(tmp_path / "half")
    with pytest.raises(ManifestError, match="is not a directory"):
        read_manifest(tmp_path / "absent")


def test_corrupt_manifest(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="is not a valid manifest"):
        read_manifest(tmp_path / "r")


def test_failed_stage_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), run_directory(tmp_path, "r1") as staging:
        (staging / "model.bin").write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_stage_without_manifest_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(ManifestError, match="without writing manifest.json"),
        run_directory(tmp_path, "r1") as staging,
    ):
        (staging / "model.bin").write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_keeps_old_run_until_new_one_finishes(tmp_path: Path) -> None:
    with run_directory(tmp_path, "r1") as staging:
        _finish(staging, text="old")
    with pytest.raises(ManifestError, match="already exists"), run_directory(tmp_path, "r1"):
        pass
    with pytest.raises(KeyboardInterrupt), run_directory(tmp_path, "r1", overwrite=True) as s:
        (s / "model.bin").write_text("new, interrupted")
        raise KeyboardInterrupt
    assert (tmp_path / "r1" / "model.bin").read_text() == "old"
    read_manifest(tmp_path / "r1")
    with run_directory(tmp_path, "r1", overwrite=True) as staging:
        _finish(staging, text="new")
    assert (tmp_path / "r1" / "model.bin").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["r1"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json_atomic(target, {"v": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(target, {"v": Unserialisable()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["m.json"]  # no temporary file left behind


def test_full_disk_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.json"
    write_json_atomic(target, {"v": 1})

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["m.json"]
