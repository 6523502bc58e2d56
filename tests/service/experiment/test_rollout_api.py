"""The rollout's admin API (GET/PUT /ab/rollout) in process and on a real server, and
`tuneserve ab-rollout` against the store and the service."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.service.conftest import asgi_app, free_port, write_serving_config
from tuneserve.cli import main

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN = {"challenger": "tuned", "steps": [0.1, 0.5], "min_samples": 10, "min_step_s": 60}


def _config(tmp_path: Path, exports: dict[str, Path], **sections: Any) -> Path:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    return write_serving_config(tmp_path / "serving.toml", variants, "baseline", **sections)


def test_admin_rollout_in_process(
    tmp_path: Path, tiny_exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("TUNESERVE_ADMIN_TOKEN", TOKEN)
    config = _config(tmp_path, tiny_exports, workers=1)
    with TestClient(asgi_app(config)) as client:
        empty = client.get("/ab/rollout").json()
        assert empty["plan"] is None and empty["events"] == [] and empty["control"] == "baseline"
        assert client.put("/ab/rollout", json={"plan": PLAN}).status_code == 401
        bad = client.put("/ab/rollout", json={"plan": {"challenger": "nope"}}, headers=AUTH)
        assert bad.status_code == 400 and "plan.challenger 'nope'" in bad.json()["error"]
        started = client.put("/ab/rollout", json={"plan": PLAN}, headers=AUTH)
        assert started.status_code == 200 and started.json()["shares"]["tuned"] == 0.1
        status = client.get("/ab/rollout").json()
        assert status["status"] == "running" and status["share"] == pytest.approx(0.1)
        assert [e["kind"] for e in status["events"]] == ["start"]
        assert status["figures"]["labelled"] == {"control": 0, "challenger": 0}
        again = client.put("/ab/rollout", json={"plan": PLAN}, headers=AUTH)
        assert again.status_code == 409 and "abort it first" in again.json()["error"]
        weights = client.put("/ab/config", json={"weights": {"tuned": 1}}, headers=AUTH)
        assert weights.status_code == 409
        assert "a rollout of 'tuned' is running" in weights.json()["error"]
        version = status["version"]
        stale = client.put("/ab/rollout", json={"action": "pause", "version": version - 1},
                           headers=AUTH)  # fmt: skip
        assert stale.status_code == 409 and stale.headers["x-experiment-version"] == str(version)
        paused = client.put("/ab/rollout", json={"action": "pause", "version": version},
                            headers=AUTH)  # fmt: skip
        assert paused.status_code == 200 and paused.json()["rollout"]["status"] == "paused"
        metrics = client.get("/metrics").text
        assert 'tuneserve_rollout_transitions_total{kind="pause"}' in metrics
        assert "tuneserve_rollout_step 0.1" in metrics
        report = client.get("/ab/report", params={"format": "text"}).text
        assert "rollout of tuned against baseline: paused" in report
    assert main(["ab-rollout", "status", "--config", str(config)]) == 0  # the store, offline
    out = capsys.readouterr().out
    assert "rollout of tuned against baseline: paused, step 1 of 2" in out and " pause " in out
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["ab-rollout", "abort", "--config", str(config), "--url", url]) == 1
    assert f"cannot reach the service at {url}" in capsys.readouterr().err
    monkeypatch.delenv("TUNESERVE_ADMIN_TOKEN")
    assert main(["ab-rollout", "resume", "--config", str(config)]) == 1
    assert "set TUNESERVE_ADMIN_TOKEN to the service's admin token" in capsys.readouterr().err


@pytest.mark.slow
def test_ab_rollout_commands_steer_a_real_server(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("TUNESERVE_ADMIN_TOKEN", TOKEN)
    config = _config(tmp_path, tiny_exports, workers=2, rollout=PLAN)  # the config's plan
    server = start_server(config)
    args = ["--config", str(config), "--url", server.url]
    assert main(["ab-rollout", "pause", *args]) == 0
    assert "rollout of tuned: paused" in capsys.readouterr().out
    assert main(["ab-rollout", "pause", *args]) == 1  # twice: the service says why not
    err = capsys.readouterr().err
    assert "refused PUT /ab/rollout: 409" in err and "no rollout plan to pause" in err
    assert main(["ab-rollout", "abort", *args]) == 0
    time.sleep(1.0)  # both workers follow the stored state
    with httpx.Client() as client:
        seen = {client.post(f"{server.url}/predict", json={"text": "good", "user_id": f"u{i}"},
                            headers={"Connection": "close"}).json()["variant"]
                for i in range(40)}  # fmt: skip
        status = client.get(f"{server.url}/ab/rollout").json()
    assert seen == {"baseline"}
    assert [e["kind"] for e in status["events"]] == ["start", "pause", "abort"]
    server.stop()
    assert main(["ab-rollout", "status", "--config", str(config)]) == 0
    assert "rollout of tuned against baseline: aborted" in capsys.readouterr().out
