"""The load-test config: TOML file, `--set`, flags on top; columns from the model's manifest chain;
the one JSON file the locustfile reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loadtests.config import LoadTestConfig, LocustSettings
from loadtests.runner import locust_env, resolve_traffic, write_settings
from tests.core.conftest import train_details
from tuneserve.cli import _loadtest_config as loadtest_config
from tuneserve.cli import build_parser, main
from tuneserve.config import load_config
from tuneserve.errors import ConfigError, DataError, ManifestError
from tuneserve.manifest import build_manifest, input_entry, read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[2]
ExportRun = Callable[[Path, dict[str, Any]], Path]


@pytest.fixture
def export_run(tiny_exports: dict[str, Path]) -> ExportRun:
    """A factory of export runs whose train run was trained with the ``data`` section given
    (manifests written by the real writer, details those of the tiny exports; no model files:
    only the manifest chain is read)."""
    export_details = read_manifest(tiny_exports["head"], stage="export", verify=False).details

    def make(root: Path, data: dict[str, Any]) -> Path:
        train = root / "train" / "run-lora"
        train.mkdir(parents=True)
        write_manifest(train, build_manifest(run_id=train.name, run_dir=train,
                                             config={"data": data}, artifacts={},
                                             details=train_details()))  # fmt: skip
        export = root / "export" / "run-lora-cpu-int8"
        export.mkdir(parents=True)
        manifest = build_manifest(run_id=export.name, run_dir=export, config={}, artifacts={},
                                  inputs=[input_entry("train_run", train)],
                                  details=export_details)  # fmt: skip
        write_manifest(export, manifest)
        return export

    return make


@pytest.fixture
def topics_csv(tmp_path: Path) -> Path:
    """A `text,label` CSV with string labels (a data set that is not SST-2)."""
    path = tmp_path / "topics.csv"
    rows = ["text,label", '"Stocks rise, again",Business', "New GPU ships,Sci/Tech",
            "Cup final tonight,Sports"]  # fmt: skip
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _cfg(*argv: str) -> LoadTestConfig:
    return loadtest_config(build_parser().parse_args(["loadtest", *argv]))


def test_the_checked_in_config_holds_the_defaults() -> None:
    assert load_config(LoadTestConfig, REPO / "configs" / "loadtest.toml") == LoadTestConfig()


def test_file_then_set_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "load.toml"
    file.write_text('rate = 5.0\nusers = 3\nduration_s = 30\nhost = "http://10.0.0.1:8000"\n')
    cfg = _cfg("--config", str(file), "--set", "users=7", "--set", "seed=4", "--rate", "9",
               "--duration", "2m")  # fmt: skip
    assert (cfg.rate, cfg.users, cfg.seed, cfg.duration_s) == (9.0, 7, 4, 120.0)
    assert cfg.host == "http://10.0.0.1:8000" and cfg.warmup_s == 5.0  # file, then default
    assert _cfg().host == "http://127.0.0.1:3000"


def test_unknown_keys_and_bad_values_are_config_errors(tmp_path: Path) -> None:
    file = tmp_path / "load.toml"
    file.write_text("userz = 3\n")
    with pytest.raises(ConfigError, match=r"userz: unknown key"):
        _cfg("--config", str(file))
    with pytest.raises(ConfigError, match=r"open loop needs --rate"):
        _cfg("--set", "open_loop=true")


def test_columns_and_label_names_come_from_the_model(
    tmp_path: Path, export_run: ExportRun, topics_csv: Path
) -> None:
    names = {"Business": "business", "Sci/Tech": "science", "Sports": "sports"}
    model = export_run(tmp_path, {"text_column": "text", "label_column": "label",
                                  "label_names": names})  # fmt: skip
    cfg, traffic = resolve_traffic(LoadTestConfig(texts=topics_csv, model=model))
    assert (cfg.text_column, cfg.label_column, cfg.label_names) == ("text", "label", names)
    assert traffic == [["Stocks rise, again", "Business"], ["New GPU ships", "Sci/Tech"],
                       ["Cup final tonight", "Sports"]]  # fmt: skip


def test_a_wrong_column_names_the_flags(
    tmp_path: Path, export_run: ExportRun, topics_csv: Path
) -> None:
    model = export_run(tmp_path, {"text_column": "sentence", "label_column": "label"})
    with pytest.raises(
        DataError,
        match=r"no column 'sentence' \(columns: text, label\): the "
        r"columns come from the train run .*; pass --text-column/--label-column",
    ):
        resolve_traffic(LoadTestConfig(texts=topics_csv, model=model))
    flags = LoadTestConfig(texts=topics_csv, model=model, text_column="text")
    assert resolve_traffic(flags)[0].text_column == "text"  # a flag beats the manifest
    without_model = LoadTestConfig(texts=topics_csv, text_column="text", label_column="label")
    assert len(resolve_traffic(without_model)[1]) == 3


def test_a_model_without_a_readable_train_run_says_how_to_go_on(
    tmp_path: Path, export_run: ExportRun, topics_csv: Path
) -> None:
    model = export_run(tmp_path, {"text_column": "text", "label_column": "label"})
    (tmp_path / "train" / "run-lora" / "manifest.json").unlink()
    with pytest.raises(ManifestError, match=r"pass --text-column/--label-column"):
        resolve_traffic(LoadTestConfig(texts=tmp_path / "x.csv", model=model))
    both = LoadTestConfig(texts=topics_csv, model=model, text_column="text", label_column="label")
    assert len(resolve_traffic(both)[1]) == 3  # both columns named: no manifest is read


def test_serve_checks_the_traffic_before_starting_a_server(
    tmp_path: Path,
    export_run: ExportRun,
    topics_csv: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = export_run(tmp_path, {"text_column": "sentence", "label_column": "label"})
    serving = tmp_path / "serving.toml"
    serving.write_text(f'[[variants]]\nname = "baseline"\npath = "{model}"\ncontrol = true\n')
    argv = ["loadtest", "--serve", str(serving), "--texts", str(topics_csv), "--out",
            str(tmp_path / "out"), "--host", "http://127.0.0.1:9"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column 'sentence'" in err[0], err  # not a server's traceback
    assert not (tmp_path / "out").exists()


def test_the_locustfile_gets_one_settings_file(tmp_path: Path) -> None:
    cfg = LoadTestConfig(open_loop=True, rate=20, label_names={"0": "negative"})
    path = write_settings(cfg, tmp_path, 40.0)
    env = locust_env(path)
    assert not [k for k in env if k.startswith("TUNESERVE_LOAD_") and k != "TUNESERVE_LOAD_CONFIG"]
    settings = LocustSettings.model_validate(
        json.loads(Path(env["TUNESERVE_LOAD_CONFIG"]).read_text())
    )
    assert settings.config == cfg.model_copy(update={"rate": 40.0})
    assert settings.traffic == tmp_path.resolve() / "traffic.json"  # absolute: Locust runs
    assert settings.results == tmp_path.resolve() / "histograms.json"  # in the repository root
    assert settings.raw is None  # the per-request dump is opt-in
    dump = write_settings(cfg.model_copy(update={"raw_requests": True}), tmp_path, 40.0)
    assert LocustSettings.model_validate_json(dump.read_text()).raw == tmp_path.resolve() / (
        "requests.jsonl"
    )


def test_the_config_the_locustfile_imports_stays_light() -> None:
    code = ("import sys, loadtests.config, loadtests.cluster\n"
            "print(sorted(m for m in ('torch', 'numpy', 'service', 'bentoml', 'locust', 'gevent')"
            " if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_the_loadtest_extra_holds_what_the_package_imports() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ;]", d)[0] for d in project["optional-dependencies"]["loadtest"]}
    assert {"locust", "matplotlib", "hdrhistogram"} <= names  # plots, merged histograms
    assert "import matplotlib" in (REPO / "loadtests" / "plots.py").read_text()
    assert project["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
