"""`tuneserve keys create|list|revoke` against a real SQLite store (the server test uses it too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service.conftest import write_serving_config
from tuneserve.cli import main


def test_create_list_revoke_and_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_serving_config(tmp_path / "serving.toml", {"a": tmp_path}, "a"))
    assert main(["keys", "list", "--config", config]) == 1  # no store yet: never created
    assert "no experiment store at" in capsys.readouterr().err
    assert (
        main(["keys", "create", "--config", config, "--name", "ci", "--scopes", "predict,nope"])
        == 1
    )
    assert "scopes must be some of predict, feedback, report, admin" in capsys.readouterr().err
    assert main(["keys", "create", "--config", config, "--name", "ci", "--scopes",
                 "predict,report", "--rate", "5", "--burst", "7"]) == 0  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    key = out[-1]
    kid = key.split("_")[1]
    assert out[0] == f"created API key {kid} (ci; scopes predict, report)"
    assert main(["keys", "list", "--config", config, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed | {"created": 0} == {"id": kid, "name": "ci", "scopes": ["predict", "report"],
                                      "created": 0, "revoked": None, "rate_per_s": 5.0,
                                      "burst": 7}  # fmt: skip
    assert main(["keys", "revoke", "--config", config, kid]) == 0
    assert f"revoked API key {kid}" in capsys.readouterr().out
    assert main(["keys", "list", "--config", config]) == 0
    table = capsys.readouterr().out
    assert kid in table and "5/s, burst 7" in table and key not in table
    assert main(["keys", "revoke", "--config", config, "000000000000"]) == 1
    assert "no API key with id '000000000000'" in capsys.readouterr().err
