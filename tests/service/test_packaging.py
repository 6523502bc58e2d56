"""Packaging: bentofile.yaml and the Dockerfile install the same dependencies; `bentoml build`
runs for real. No Docker engine runs here, so the Dockerfile is checked statically."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.service.conftest import write_serving_config


def _requirements(path: Path) -> set[str]:
    lines = path.read_text().splitlines()
    return {re.sub(r"\s+", "", line) for line in lines if line.strip() and not line.startswith("#")}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _dockerfile_stages(text: str) -> dict[str, list[str]]:
    """RUN/COPY/ENV/CMD instructions per stage, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: dict[str, list[str]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def test_bentofile_dockerfile_and_extra_install_the_same_dependencies() -> None:
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    requirements_file = REPO / bentofile["python"]["requirements_txt"]
    wanted = _requirements(requirements_file)
    assert not any(_name(r) in ("torch", "transformers") for r in wanted), (
        "the service has no torch"
    )

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    core = set(pyproject["project"]["dependencies"])
    serve_extra = set(pyproject["project"]["optional-dependencies"]["serve"])
    assert {re.sub(r"\s+", "", r) for r in core | serve_extra} == wanted

    stages = _dockerfile_stages((REPO / "Dockerfile").read_text())
    assert list(stages)[-1] == "cpu", "the default (last) stage must be the CPU image"
    assert set(stages) == {"cpu", "gpu"}
    rel = str(requirements_file.relative_to(REPO))
    for name, lines in stages.items():
        runs = " ".join(line for line in lines if line.startswith("RUN"))
        assert f"pip install -r {rel}" in runs, f"{name} stage does not install {rel}"
        assert any(line.startswith(f"COPY {rel}") for line in lines)
        assert re.search(r"pip install (?!-r)", runs) is None or name == "gpu"
        cmd = next(line for line in lines if line.startswith("CMD"))
        assert '"service.app:Tuneserve"' in cmd and bentofile["service"] == "service.app:Tuneserve"
    gpu_runs = " ".join(line for line in stages["gpu"] if line.startswith("RUN"))
    assert "nvidia/cuda" in stages["gpu"][0] and "cudnn-runtime" in stages["gpu"][0]
    assert "pip uninstall -y onnxruntime" in gpu_runs
    ort = next(r for r in wanted if _name(r) == "onnxruntime")
    gpu_pin = re.search(r'"onnxruntime-gpu([^"]*)"', gpu_runs)
    assert gpu_pin and gpu_pin.group(1) == ort.removeprefix("onnxruntime"), "same ORT version"
    assert "serving-gpu.toml" in " ".join(stages["gpu"])
    # every source directory the bento includes is copied into both images
    for pattern in bentofile["include"]:
        top = pattern.split("/")[0]
        for name, lines in stages.items():
            assert any(line.startswith(f"COPY {top}") for line in lines), (name, top)


def test_images_keep_bentoml_respawning_dead_workers() -> None:
    # BentoML turns worker respawn off when either variable is set, to any value
    # (bentoml.serving.running_inside_container); our images must replace a killed worker.
    stages = _dockerfile_stages((REPO / "Dockerfile").read_text())
    for name, lines in stages.items():
        env = " ".join(line for line in lines if line.split()[0] in ("ENV", "ARG"))
        for variable in ("BENTOML_CONTAINERIZED", "BENTOCLOUD_DEPLOYMENT_URL"):
            assert variable not in env, f"the {name} image sets {variable}"
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert "BENTOML_CONTAINERIZED" not in {e["name"] for e in bentofile.get("envs", [])}


@pytest.mark.slow
def test_bentoml_build_packs_service_config_and_models(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    project = tmp_path / "project"
    for item in ("service", "tuneserve", "requirements", "bentofile.yaml"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, project / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, project / item)
    exports = project / "artifacts" / "export"
    exports.mkdir(parents=True)
    for key in ("head", "lora"):
        shutil.copytree(tiny_exports[key], exports / tiny_exports[key].name)
    (project / "configs").mkdir()
    write_serving_config(
        project / "configs" / "serving.toml",
        {"baseline": Path("artifacts/export") / tiny_exports["head"].name,
         "tuned": Path("artifacts/export") / tiny_exports["lora"].name},
        "baseline",
    )  # fmt: skip
    home = tmp_path / "bentoml-home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("TUNESERVE_SERVING_CONFIG", None)
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-o", "tag"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    src = bento / "src"
    assert (src / "service" / "app.py").is_file() and (src / "tuneserve" / "manifest.py").is_file()
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "service").rglob("*.py")}
    assert {p.relative_to(src).as_posix() for p in (src / "service").rglob("*.py")} == modules
    assert (src / "configs" / "serving.toml").is_file()
    for key in ("head", "lora"):
        export = src / "artifacts" / "export" / tiny_exports[key].name
        assert (export / "manifest.json").is_file()
        assert (export / "onnx" / "model.int8.onnx").is_file()
        assert not (export / "merged").exists(), "the merged PyTorch weights are not shipped"
    packed = bento / "env" / "python" / "requirements.txt"
    assert _requirements(packed) >= _requirements(REPO / "requirements" / "serve.txt")
    assert not (src / "tests").exists() and not (src / "training").exists()
    assert not (src / ".tuneserve").exists(), "the prediction id key must not ship in the bento"
