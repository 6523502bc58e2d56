"""The live experiment: admin changes adopted at once, reaching every worker, surviving restarts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from service.config import load_serving_config
from service.experiment import ExperimentState
from service.predictor import Predictor
from service.store import Store
from tests.service.conftest import asgi_app, write_serving_config

TOKEN = "s3cret-admin-token"


def _config(tmp_path: Path, exports: dict[str, Path], **sections: Any) -> Path:
    variants = {"baseline": exports["head"], "tuned": exports["lora"]}
    return write_serving_config(tmp_path / "serving.toml", variants, "baseline", **sections)


def test_change_survives_restart_and_config_edits_win(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    config = _config(tmp_path, tiny_exports)
    settings = load_serving_config(config)
    first = Predictor(settings)
    first.experiment.change({"weights": {"tuned": 1, "baseline": 3}, "salt": "exp-2"})
    assert first.experiment.router.shares["tuned"] == pytest.approx(0.25)
    restarted = Predictor(settings)  # same store, same config: the admin change survives
    again = restarted.experiment
    assert again.state.salt == "exp-2" and again.router.shares["tuned"] == 0.25
    history = Store(settings.store.path).history()
    assert [h["by"] for _, h in history] == ["config", "admin"]
    edited = settings.model_copy(
        update={"experiment": settings.experiment.model_copy(update={"salt": "from-config"})}
    )
    assert Predictor(edited).experiment.state.salt == "from-config"  # an edited config starts over


def test_coverage_and_shadow_change_live(tmp_path: Path, tiny_exports: dict[str, Path]) -> None:
    settings = load_serving_config(_config(tmp_path, tiny_exports))
    predictor = Predictor(settings)
    summary = predictor.experiment.change(
        {"coverage": 0.25, "shadow": {"variant": "tuned", "share": 0.5}}
    )
    assert summary["coverage"] == 0.25 and summary["shadow"] == {"variant": "tuned", "share": 0.5}
    assert predictor.experiment.router.coverage == 0.25
    restarted = Predictor(settings)
    state = restarted.experiment.state
    assert (state.coverage, state.shadow_share) == (0.25, 0.5)
    off = predictor.experiment.change({"shadow": {"variant": ""}})
    assert off["shadow"] == {"variant": "", "share": 0.5}


def test_admin_api_in_process(
    tmp_path: Path, tiny_exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNESERVE_ADMIN_TOKEN", TOKEN)
    with TestClient(asgi_app(_config(tmp_path, tiny_exports, workers=1))) as client:
        current = client.get("/ab/config").json()
        assert current["weights"] == {"baseline": 1.0, "tuned": 1.0} and current["version"] >= 1
        assert client.put("/ab/config", json={"disable": ["tuned"]}).status_code == 401
        wrong = client.put("/ab/config", json={"disable": ["tuned"]},
                           headers={"Authorization": "Bearer nope"})  # fmt: skip
        assert wrong.status_code == 401 and wrong.json()["kind"] == "unauthorized"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        bad = client.put("/ab/config", json={"weights": {"x": 1}}, headers=auth)
        assert bad.status_code == 400 and "unknown variant 'x'" in bad.json()["error"]
        broken = client.put("/ab/config", content=b"{", headers=auth)
        assert broken.status_code == 400
        ok = client.put("/ab/config", json={"disable": ["tuned"]}, headers=auth)
        assert ok.status_code == 200 and ok.json()["shares"]["tuned"] == 0
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        seen = {client.post("/predict", json={"text": "good", "user_id": f"u{i}"}).json()["variant"]
                for i in range(30)}  # fmt: skip
        assert seen == {"baseline"}
        back = client.put("/ab/config", json={"enable": ["tuned"]}, headers=auth)
        assert back.json()["disabled"] == []
    monkeypatch.delenv("TUNESERVE_ADMIN_TOKEN")
    with TestClient(asgi_app(_config(tmp_path, tiny_exports, workers=1))) as client:
        refused = client.put("/ab/config", json={"disable": ["tuned"]},
                             headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert refused.status_code == 403 and "TUNESERVE_ADMIN_TOKEN" in refused.json()["error"]


@pytest.mark.slow
def test_a_change_reaches_every_worker_within_a_second(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TUNESERVE_ADMIN_TOKEN", TOKEN)
    server = start_server(_config(tmp_path, tiny_exports, workers=2))  # both workers ready
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.put(f"{server.url}/ab/config", json={"disable": ["tuned"]}, headers=auth)
    assert r.status_code == 200
    time.sleep(1.0)
    with httpx.Client() as client:  # new connections, spread over both workers
        variants = {client.post(f"{server.url}/predict", json={"text": "good", "user_id": f"u{i}"},
                                headers={"Connection": "close"}).json()["variant"]
                    for i in range(60)}  # fmt: skip
    assert variants == {"baseline"}
    assert ExperimentState.from_json(r.json()).disabled == ("tuned",)
    server.stop()
    log = server.log.read_text().splitlines()
    changed = [line for line in log if "experiment state changed to version 2" in line]
    assert len(changed) == 1
    other = "tuneserve:2]" if "tuneserve:1]" in changed[0] else "tuneserve:1]"
    using = [line for line in log if "using experiment state version 2" in line]
    assert any(other in line for line in using), "the other worker never picked the change up"
