"""The key middleware in process: over a small Starlette app and a real SQLite store, behind the
service's GuardMiddleware as in app.py (every scope allowed and refused, the admin token, rate
limits and their headers, counters by key id, nothing of the key logged)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service import metrics
from service.apikeys import KeyStore
from service.auth import PRINCIPAL, AuthMiddleware, check_admin
from service.config import ServingConfig
from service.errors import ServiceError
from service.middleware import GuardMiddleware
from service.store import Store
from service.v2 import V2ErrorShape

TOKEN = "the-admin-token-0123456789"


async def _echo(request: Request) -> JSONResponse:
    principal = request.scope.get(PRINCIPAL)
    return JSONResponse({"key": principal.key_id if principal else None})


async def _admin(request: Request) -> JSONResponse:
    check_admin(request, "TEST_ADMIN_TOKEN")
    return JSONResponse({"ok": True})


def _error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(exc.body(), status_code=exc.status)


def _settings(tmp_path: Path, **auth: object) -> ServingConfig:
    return ServingConfig.model_validate({
        "variants": [{"name": "a", "path": str(tmp_path), "control": True}], "workers": 1,
        "admin_token_env": "TEST_ADMIN_TOKEN", "store": {"path": str(tmp_path / "s.sqlite")},
        "auth": {"require_keys": True, "refresh_s": 0.1, **auth},
    })  # fmt: skip


def _client(settings: ServingConfig, v2_shape: bool = False) -> TestClient:
    paths = ("/predict", "/feedback", "/ab/report", "/models", "/livez", "/v2/health/live",
             "/v2/models/tuneserve/infer", "/somewhere/new")  # fmt: skip
    routes = [Route(p, _echo, methods=["GET", "POST"]) for p in paths]
    routes.append(Route("/ab/config", _admin, methods=["PUT"]))
    outermost = [Middleware(V2ErrorShape)] if v2_shape else []  # first, as in app.py
    app = Starlette(routes=routes, exception_handlers={ServiceError: _error}, middleware=[
        *outermost,
        Middleware(GuardMiddleware, limits=settings.limits),
        Middleware(AuthMiddleware, settings=settings),
    ])  # fmt: skip
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, dict]]:
    monkeypatch.setenv("TEST_ADMIN_TOKEN", TOKEN)
    settings = _settings(tmp_path)
    keys = KeyStore(Store(settings.store.path))
    made = {scope: keys.create(f"client-{scope}", [scope]) for scope in
            ("predict", "feedback", "report", "admin")}  # fmt: skip
    made["limited"] = keys.create("limited", ["predict"], rate_per_s=0.01, burst=2)
    with _client(settings) as client:
        client.get("/livez")  # builds the middleware, whose cache reads the keys
        time.sleep(0.3)
        yield client, {name: (record, key) for name, (record, key) in made.items()} | {
            "_keys": keys}  # fmt: skip
    keys.store.close()


ROUTES = [("post", "/predict", "predict"), ("post", "/v2/models/tuneserve/infer", "predict"),
          ("post", "/feedback", "feedback"), ("get", "/ab/report", "report"),
          ("put", "/ab/config", "admin"), ("get", "/somewhere/new", "admin")]  # fmt: skip


def test_every_scope_is_allowed_its_routes_and_refused_the_others(keyed: tuple) -> None:
    client, made = keyed
    for method, path, needed in ROUTES:
        for scope in ("predict", "feedback", "report", "admin"):
            record, key = made[scope]
            header = {"Authorization": f"Bearer {key}"} if scope != "report" else {
                "X-API-Key": key}  # fmt: skip
            r = getattr(client, method)(path, headers=header)
            if scope in (needed, "admin"):
                assert r.status_code == 200, (scope, method, path, r.text)
                assert path == "/ab/config" or r.json()["key"] == record.id
            else:
                assert r.status_code == 403, (scope, method, path)
                body = r.json()
                assert body["kind"] == "forbidden" and f"needs {needed}" in body["error"]
                assert key not in r.text
    text = _metrics_text()  # a refusal for its scope is counted for the key, by id
    assert f'key_id="{made["predict"][0].id}",outcome="403"' in text
    for scope in ("predict", "feedback", "report", "admin"):  # metadata: any scope
        assert client.get("/models", headers={"X-API-Key": made[scope][1]}).status_code == 200


def test_no_key_an_unknown_or_a_revoked_key_is_401_and_public_routes_stay_open(
    keyed: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    client, made = keyed
    caplog.set_level(logging.DEBUG, logger="service")
    assert client.get("/livez").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    missing = client.post("/predict")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["kind"] == "unauthorized" and "X-API-Key" in missing.json()["error"]
    record, key = made["predict"]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for bad in (forged, "ts_nope", "Basic abc"):
        r = client.post("/predict", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401 and "not known" in r.json()["error"] and bad not in r.text
    made["_keys"].revoke(record.id)
    deadline = time.monotonic() + 1.0  # refresh_s 0.1: refused well within the bound
    while client.post("/predict", headers={"X-API-Key": key}).status_code == 200:
        assert time.monotonic() < deadline, "the revoked key still worked after 1 s"
        time.sleep(0.02)
    r = client.post("/predict", headers={"X-API-Key": key})
    assert r.status_code == 401 and f"API key {record.id} was revoked" in r.json()["error"]
    assert key not in caplog.text and "client-predict" not in caplog.text
    assert record.id in caplog.text


def test_the_admin_token_is_admin_and_is_not_limited(keyed: tuple) -> None:
    client, _ = keyed
    for _ in range(5):
        assert client.put("/ab/config", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {
            "ok": True}  # fmt: skip
    r = client.post("/predict", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and "ratelimit-limit" not in r.headers
    assert client.put("/ab/config", headers={"X-API-Key": TOKEN + "x"}).status_code == 401


def test_a_key_over_its_limit_gets_429_with_retry_after_and_ratelimit_headers(
    keyed: tuple,
) -> None:
    client, made = keyed
    record, key = made["limited"]
    answers = [client.post("/predict", headers={"X-API-Key": key}) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 429, 429]
    assert [r.headers["ratelimit-remaining"] for r in answers] == ["1", "0", "0", "0"]
    assert all(r.headers["ratelimit-limit"] == "2" for r in answers)
    refused = answers[-1]
    assert int(refused.headers["retry-after"]) >= 99  # 0.01/s: 100 s per request
    assert int(refused.headers["ratelimit-reset"]) >= int(refused.headers["retry-after"])
    assert refused.json()["kind"] == "rate_limited" and record.id in refused.json()["error"]
    text = _metrics_text()
    assert f'key_id="{record.id}",outcome="429"' in text and key not in text
    assert "limited" not in text.replace("rate_limited", "")


def test_keys_off_passes_everything_through(tmp_path: Path) -> None:
    settings = _settings(tmp_path, require_keys=False)
    with _client(settings) as client:
        r = client.post("/predict")
        assert r.status_code == 200 and r.json() == {"key": None}
        assert "ratelimit-limit" not in r.headers
        assert client.put("/ab/config").status_code == 403  # the admin token check, as before


def _metrics_text() -> str:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    assert metrics.KEY_REQUESTS is not None
    return generate_latest(registry).decode()


def test_refusals_under_v2_come_in_the_v2_shape_with_their_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the v2 shape outermost, as app.py adds it, a key's 401/403/429 on a v2 route is
    ``{"error": ...}`` alone, and keeps WWW-Authenticate, Retry-After and the RateLimit headers."""
    settings = _settings(tmp_path)
    keys = KeyStore(Store(settings.store.path))
    _, report_key = keys.create("reader", ["report"])
    _, limited = keys.create("limited", ["predict"], rate_per_s=0.01, burst=1)
    infer = "/v2/models/tuneserve/infer"
    with _client(settings, v2_shape=True) as client:
        client.get("/livez")
        time.sleep(0.3)  # the key cache has read the keys
        missing = client.post(infer)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert set(missing.json()) == {"error"} and "X-API-Key" in missing.json()["error"]
        wrong = client.post(infer, headers={"X-API-Key": report_key})
        assert wrong.status_code == 403 and set(wrong.json()) == {"error"}
        assert client.post(infer, headers={"X-API-Key": limited}).status_code == 200
        over = client.post(infer, headers={"X-API-Key": limited})
        assert over.status_code == 429 and set(over.json()) == {"error"}
        assert int(over.headers["retry-after"]) >= 1 and "ratelimit-remaining" in over.headers
        native = client.post("/predict")  # outside /v2 the service's own shape stays
        assert native.status_code == 401 and native.json()["kind"] == "unauthorized"
    keys.store.close()
