from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.core.conftest import train_details
from tuneserve.details import (
    DETAILS_VERSION,
    CompareDetails,
    CVDetails,
    ExportDetails,
    TrainDetails,
    parse_details,
)
from tuneserve.errors import ManifestError
from tuneserve.manifest import (
    MANIFEST_NAME,
    Manifest,
    build_manifest,
    read_manifest,
    write_manifest,
)


def _finish(run_dir: Path, details: Any) -> Manifest:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "a.txt").write_text("a")
    manifest = build_manifest(
        run_id=run_dir.name, run_dir=run_dir, config={}, artifacts={"a": "a.txt"}, details=details
    )
    write_manifest(run_dir, manifest)
    return manifest


def _write(run_dir: Path, details: Any) -> Path:
    _finish(run_dir, details)
    return run_dir


def _edit(run_dir: Path, change: Any) -> None:
    """Rewrite the manifest's JSON with ``change(raw)`` applied."""
    path = run_dir / MANIFEST_NAME
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_train_and_compare_details_round_trip(tmp_path: Path) -> None:
    compare = CompareDetails(
        run_a="r-head", run_b="r-lora", method_a="head", method_b="lora", test_examples=50
    )
    for name, details in (("train", train_details()), ("compare", compare)):
        written = _finish(tmp_path / name, details)
        assert written.stage == details.stage
        back = read_manifest(tmp_path / name, stage=details.stage)
        assert back == written
        assert back.details == details and type(back.details) is type(details)
        raw = json.loads((tmp_path / name / MANIFEST_NAME).read_text())
        assert back.model_dump(mode="json") == raw  # nothing lost or added on the way back
        assert raw["details"]["details_version"] == DETAILS_VERSION


def test_typed_access_checks_the_stage(tmp_path: Path) -> None:
    manifest = read_manifest(_write(tmp_path / "r", train_details()))
    assert manifest.details_as(TrainDetails).model.max_length == 32
    with pytest.raises(ManifestError, match="run r is a 'train' run: it has no export details"):
        manifest.details_as(ExportDetails)


def test_old_or_unknown_details_version_says_to_run_the_stage_again(tmp_path: Path) -> None:
    run = _write(tmp_path / "r", train_details())
    _edit(run, lambda raw: raw["details"].pop("details_version"))
    with pytest.raises(
        ManifestError,
        match=r"manifest.json: the train details were written before details were versioned; "
        r"this tuneserve reads version 1: train it again with this version of tuneserve",
    ):
        read_manifest(run)
    # the wrong stage is named before the details are looked at
    with pytest.raises(ManifestError, match="is a 'train' run, expected a 'export' run"):
        read_manifest(run, stage="export")
    _edit(run, lambda raw: raw["details"].update(details_version=99))
    with pytest.raises(ManifestError, match="the train details have schema version 99; this"):
        read_manifest(run)


def test_corrupt_details_name_every_field_and_the_fix(tmp_path: Path) -> None:
    run = _write(tmp_path / "r", train_details())
    _edit(run, lambda raw: raw["details"]["model"].update(max_length="long"))
    _edit(run, lambda raw: raw["details"].update(surprise=1))
    with pytest.raises(
        ManifestError,
        match=r"the train details are not valid \(details.model.max_length: Input should be a "
        r"valid integer.*; details.surprise: Extra inputs are not permitted\): train it again",
    ):
        read_manifest(run)
    _edit(run, lambda raw: raw.update(details=["not", "an", "object"]))
    with pytest.raises(ManifestError, match="the train details are not a JSON object"):
        read_manifest(run)


def test_details_of_another_stage_are_refused(tmp_path: Path) -> None:
    """A train manifest carrying compare details (or a stage nobody writes) does not validate."""
    compare = CompareDetails(
        run_a="a", run_b="b", method_a="head", method_b="lora", test_examples=1
    ).model_dump(mode="json")
    run = _write(tmp_path / "r", train_details())
    _edit(run, lambda raw: raw.update(details=compare))
    with pytest.raises(ManifestError, match=r"details.method: Field required"):
        read_manifest(run)
    _edit(run, lambda raw: raw.update(stage="deploy"))
    with pytest.raises(ManifestError, match="no details schema for a 'deploy' run: known stages"):
        read_manifest(run)


def test_the_models_are_strict_and_frozen() -> None:
    details = train_details()
    with pytest.raises(ValidationError, match="frozen"):
        details.method = "lora"  # type: ignore[misc]
    expected = "details.method: Input should be 'head', 'lora' or 'distill'"
    with pytest.raises(ManifestError, match=expected):
        parse_details("train", details.model_dump() | {"method": "full"})
    for kind in (TrainDetails, CompareDetails, CVDetails, ExportDetails):
        undocumented = [n for n, f in kind.model_fields.items() if not f.description]
        assert undocumented == [], f"{kind.__name__} fields without a description: {undocumented}"
