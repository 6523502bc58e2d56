"""The live experiment: admin changes and guardrail trips adopted at once, stored, reaching every
worker and surviving restarts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from service import metrics
from service.config import load_serving_config
from service.errors import DeadlineError
from service.experiment import Experiment, ExperimentState
from service.predictor import Predictor
from service.report import build_report, format_report
from service.store import Store
from tests.service.conftest import asgi_app, write_serving_config
from tests.service.test_guardrails import FAST, labelled_rows, request_rows

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
    assert Predictor(edited).experiment.state.salt == "exp-2"  # same revision: the store wins
    bumped = edited.model_copy(
        update={"experiment": edited.experiment.model_copy(update={"revision": 1})}
    )
    assert Predictor(bumped).experiment.state.salt == "from-config"  # a newer revision starts over


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
        ok = client.put("/ab/config", json={"disable": ["tuned"], "version": current["version"]},
                        headers=auth)  # fmt: skip
        assert ok.status_code == 200 and ok.json()["shares"]["tuned"] == 0
        stale = client.put("/ab/config", json={"coverage": 0.5, "version": current["version"]},
                           headers=auth)  # fmt: skip
        assert stale.status_code == 409 and stale.json()["kind"] == "conflict"
        assert stale.headers["x-experiment-version"] == str(ok.json()["version"])
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


def _predictor(tmp_path: Path, exports: dict[str, Path], **sections: Any) -> Predictor:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    path = write_serving_config(tmp_path / "serving.toml", variants, "baseline", **sections)
    predictor = Predictor(load_serving_config(path))
    predictor.warm_up()
    return predictor


def _wait_disabled(predictor: Predictor, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while "tuned" not in predictor.experiment.state.disabled:
        assert time.monotonic() < deadline, "the guardrail never tripped"
        time.sleep(0.05)


async def _send(predictor: Predictor, n: int, start: int = 0) -> list[str]:
    variants = []
    for i in range(start, start + n):
        try:
            answers = await predictor.predict(["good film"], user_id=f"user-{i}")
            variants.append(answers.variant)
        except DeadlineError:
            variants.append("failed")
    return variants


def test_a_slow_challenger_is_taken_out_of_rotation_and_put_back_by_the_admin(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, guardrails=FAST | {"max_p99_ms": 0.001})
    trips = metrics.GUARDRAIL_TRIPS.labels(variant="tuned", kind="p99_latency")._value.get()
    seen = asyncio.run(_send(predictor, 120))
    assert seen.count("tuned") >= 20  # sticky users split between both
    _wait_disabled(predictor)
    assert metrics.GUARDRAIL_TRIPS.labels(variant="tuned", kind="p99_latency")._value.get() == (
        trips + 1
    )
    assert metrics.VARIANT_ENABLED.labels(variant="tuned")._value.get() == 0
    assert set(asyncio.run(_send(predictor, 100, start=1000))) == {"baseline"}
    report = build_report(predictor.store, predictor.settings)
    (trip,) = report["guardrail_trips"]
    assert trip["variant"] == "tuned" and trip["kind"] == "p99_latency"
    assert trip["detail"]["bound_ms"] == 0.001
    assert not next(v for v in report["variants"] if v["variant"] == "tuned")["enabled"]
    assert "guardrail: tuned taken out of rotation (p99_latency)" in format_report(report)
    # the trip is stored: a new worker on the same store starts with it
    other = Predictor(predictor.settings)
    assert other.experiment.state.disabled == ("tuned",)
    asyncio.run(other.close())
    predictor.experiment.change({"enable": ["tuned"]})
    assert predictor.experiment.state.disabled == ()
    time.sleep(0.5)  # five window checks: the requests before it was put back do not count
    assert predictor.experiment.state.disabled == ()
    asyncio.run(predictor.close())


def test_a_failing_challenger_trips_on_its_error_rate_and_errors_are_reported(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, guardrails=FAST, limits={"deadline_ms": 0.001})
    seen = asyncio.run(_send(predictor, 80))
    assert set(seen) == {"failed"}  # nothing meets a 1 microsecond deadline
    _wait_disabled(predictor)
    asyncio.run(predictor.close())
    report = build_report(Store(predictor.settings.store.path), predictor.settings)
    by_name = {v["variant"]: v for v in report["variants"]}
    assert by_name["tuned"]["errors"] + by_name["baseline"]["errors"] == 80
    assert by_name["tuned"]["error_rate"] == 1.0 and by_name["baseline"]["error_rate"] == 1.0
    assert by_name["baseline"]["enabled"]  # the control is never taken out
    assert report["guardrail_trips"][0]["kind"] == "error_rate"


def test_a_worse_challenger_trips_on_accuracy_from_the_store(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    predictor = _predictor(tmp_path, tiny_exports, guardrails=FAST | {"accuracy_alpha": 0.01})
    rows, feedback = [], []
    for variant, ts, correct, _ in labelled_rows(600, 0.9, 0.6, seed=3):
        pid = f"{variant}-{ts}"
        rows.append({"id": pid, "ts": time.time() - 2000 + ts, "variant": variant,
                     "model_version": "m", "unit": "user", "unit_hash": "h", "forced": 0,
                     "label": "positive", "score": 0.9, "latency_ms": 1.0})  # fmt: skip
        feedback.append((pid, "positive" if correct else "negative"))
    predictor.store.log_predictions(rows)
    for pid, label in feedback:
        predictor.store.add_feedback(pid, label)
    _wait_disabled(predictor)
    report = build_report(predictor.store, predictor.settings)
    assert report["guardrail_trips"][0]["kind"] == "accuracy"
    # put back by the admin, it is judged only on what it answers from then on: the old
    # evidence does not trip it again at once
    predictor.experiment.change({"enable": ["tuned"]})
    time.sleep(1.5)  # three store checks
    assert predictor.experiment.state.disabled == ()
    asyncio.run(predictor.close())


def _until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the other worker never followed"
        time.sleep(0.02)


def test_two_workers_on_one_store_follow_each_others_changes_and_trips(
    tmp_path: Path, tiny_exports: dict[str, Path], new_store: Any
) -> None:
    settings = load_serving_config(_config(tmp_path, tiny_exports, guardrails=FAST))
    location = new_store()
    one, two = Experiment(settings, Store(location)), Experiment(settings, Store(location))
    assert one.version == two.version == 1  # seeded from the config once, adopted by the other
    summary = one.change({"weights": {"tuned": 1, "baseline": 3}})
    assert summary["version"] == 2 and summary["shares"]["tuned"] == 0.25
    _until(lambda: two.version == 2)
    assert two.router.shares == one.router.shares and two.state == one.state
    trips = metrics.GUARDRAIL_TRIPS.labels(variant="tuned", kind="error_rate")._value.get()
    salt = one.state.salt
    half = FAST["min_requests"] // 2  # each replica logs half: neither slice alone is judged
    for store in (one.store, two.store):
        store.log_predictions(request_rows("tuned", half, failed=half, salt=salt))
        store.log_predictions(request_rows("baseline", half, failed=half, salt=salt))
    _until(lambda: "tuned" in one.state.disabled and "tuned" in two.state.disabled)
    assert two.state.disabled == ("tuned",) and one.version == two.version == 3
    assert one.leadership.is_leader != two.leadership.is_leader  # one leader decided
    assert one.router.shares["tuned"] == 0.0
    assert metrics.GUARDRAIL_TRIPS.labels(variant="tuned", kind="error_rate")._value.get() == (
        trips + 1
    )  # one trip, by the leader, from both replicas' requests
    history = [entry.change for entry in one.store.history()]
    assert [(c["by"], c["version"]) for c in history] == [
        ("config", 1), ("admin", 2), ("guardrail", 3),
    ]  # fmt: skip
    assert history[-1]["kind"] == "error_rate" and history[-1]["detail"]["requests"] == 20
    for experiment in (one, two):
        experiment.close()
        experiment.store.close()
