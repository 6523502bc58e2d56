"""The manifest contract: written last and atomically; read back validated, every hash checked."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from tuneserve import __version__
from tuneserve.details import AnyDetails, StageDetails, parse_details
from tuneserve.errors import ManifestError

D = TypeVar("D", bound=StageDetails)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


class ArtifactEntry(BaseModel):
    """One file of a run: path relative to the run directory, its sha256 and size."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str = Field(description="path relative to the run directory")
    sha256: str = Field(description="hex sha256 of the file's bytes")
    bytes: int = Field(ge=0, description="file size in bytes")


class InputEntry(BaseModel):
    """A parent run this run was made from."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    role: str = Field(description="what the input is for, e.g. 'train_run'")
    path: str = Field(description="path of the parent's manifest as given")
    sha256: str = Field(description="sha256 of the parent's manifest.json")


class Manifest(BaseModel):
    """What a finished run directory holds and how it was made."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: int = Field(SCHEMA_VERSION, description="manifest schema version")
    stage: str = Field(description="the stage that wrote the run: train, export, compare ...")
    run_id: str = Field(description="the run directory's name")
    created_at: str = Field(description="UTC time the manifest was written, ISO 8601")
    code_version: dict[str, str | None] = Field(description="package version and git commit")
    config: dict[str, Any] = Field(description="the fully resolved config of the run")
    inputs: list[InputEntry] = Field(default_factory=list, description="parent manifests")
    artifacts: dict[str, ArtifactEntry] = Field(description="role -> file")
    metrics: dict[str, Any] = Field(default_factory=dict, description="headline figures")
    libraries: dict[str, str] = Field(default_factory=dict, description="library versions")
    details: AnyDetails = Field(description="the stage's typed, versioned facts")

    @field_validator("details", mode="before")
    @classmethod
    def _details_of_stage(cls, value: Any, info: ValidationInfo) -> StageDetails:
        return parse_details(str(info.data.get("stage")), value)

    def details_as(self, kind: type[D]) -> D:
        """The details, typed as ``kind``: a ManifestError when the run is of another stage."""
        if not isinstance(self.details, kind):
            raise ManifestError(
                f"run {self.run_id} is a {self.stage!r} run: it has no {kind.stage} details"
            )
        return self.details


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_entry(run_dir: Path, relative: str) -> ArtifactEntry:
    """Hash one file of ``run_dir``."""
    path = run_dir / relative
    return ArtifactEntry(path=relative, sha256=sha256_file(path), bytes=path.stat().st_size)


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones are left out)."""
    versions = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def build_manifest(
    *,
    run_id: str,
    run_dir: Path,
    config: dict[str, Any],
    artifacts: dict[str, str],
    inputs: Iterable[InputEntry] = (),
    metrics: dict[str, Any] | None = None,
    details: AnyDetails,
    libraries: Iterable[str] = (),
) -> Manifest:
    """Hash every artifact (role -> relative path) and assemble the manifest (of the details'
    stage)."""
    return Manifest(
        schema_version=SCHEMA_VERSION,
        stage=details.stage,
        run_id=run_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        code_version={"tuneserve": __version__, "git_commit": git_commit()},
        config=config,
        inputs=list(inputs),
        artifacts={role: artifact_entry(run_dir, rel) for role, rel in artifacts.items()},
        metrics=metrics or {},
        libraries=library_versions(["tuneserve", *libraries]),
        details=details,
    )


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file in the same directory, fsync it, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_manifest(run_dir: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically; call it last, when every artifact is in place."""
    path = run_dir / MANIFEST_NAME
    write_json_atomic(path, manifest.model_dump(mode="json"))
    return path


def read_manifest(run_dir: str | Path, stage: str | None = None, verify: bool = True) -> Manifest:
    """Read and validate ``run_dir/manifest.json``; check the stage and every artifact's sha256."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_NAME
    if not run_dir.is_dir():
        raise ManifestError(f"{run_dir} is not a directory: point at a finished run directory")
    if not path.is_file():
        raise ManifestError(
            f"{run_dir} has no {MANIFEST_NAME}: the run did not finish; run the stage again"
        )
    try:
        raw = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not a valid manifest: not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path} is not a valid manifest: not a JSON object")
    version = raw.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path} has schema version {version}, expected {SCHEMA_VERSION}")
    if stage is not None and raw.get("stage") != stage:
        raise ManifestError(f"{run_dir} is a {raw.get('stage')!r} run, expected a {stage!r} run")
    try:
        raw["details"] = parse_details(str(raw.get("stage")), raw.get("details"))
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(f"{path} is not a valid manifest: {exc.errors()[0]['msg']}") from exc
    if verify:
        verify_artifacts(run_dir, manifest)
    return manifest


def verify_artifacts(
    run_dir: Path, manifest: Manifest, only: Callable[[str], bool] | None = None
) -> None:
    """Raise one ManifestError naming every missing or changed artifact (those ``only`` keeps)."""
    problems = []
    for role, entry in manifest.artifacts.items():
        if only is not None and not only(entry.path):
            continue
        file = run_dir / entry.path
        if not file.is_file():
            problems.append(f"{role} ({entry.path}) is missing")
        elif file.stat().st_size != entry.bytes or sha256_file(file) != entry.sha256:
            problems.append(f"{role} ({entry.path}) does not match its recorded sha256")
    if problems:
        raise ManifestError(
            f"{run_dir}: " + "; ".join(problems) + ": the files were changed after the run; "
            "run the stage again"
        )


def input_entry(role: str, run_dir: Path) -> InputEntry:
    """Describe a parent run by its manifest's path and hash."""
    path = run_dir / MANIFEST_NAME
    return InputEntry(role=role, path=str(path), sha256=sha256_file(path))


@contextlib.contextmanager
def run_directory(root: Path, run_id: str, overwrite: bool = False) -> Iterator[Path]:
    """Stage a run in a hidden sibling directory and move it to ``root/run_id`` on success.

    A directory with a manifest is a finished run. The stage writes into the staging
    directory (manifest last); only when it returns is the staging directory renamed into
    place, so a failed or interrupted run never leaves a directory that looks finished, and an
    existing run replaced with ``overwrite`` survives a failed attempt.
    """
    target = root / run_id
    if target.exists() and not overwrite:
        raise ManifestError(
            f"{target} already exists: pass another --run-id, or --overwrite to replace it"
        )
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_id}.", suffix=".partial", dir=root))
    try:
        yield staging
        if not (staging / MANIFEST_NAME).is_file():
            raise ManifestError(f"stage finished without writing {MANIFEST_NAME} in {staging}")
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{run_id}.", suffix=".old", dir=root))
            os.replace(target, trash / run_id)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
