"""A real `bentoml serve` (two workers) with API keys required: keys made and revoked with
`tuneserve keys` while it runs, every scope allowed and refused, 429 with its headers, and the
metrics naming key ids only."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_sentences, write_tsv
from tests.service.conftest import write_serving_config
from tuneserve.cli import main

pytestmark = pytest.mark.slow
TOKEN = "server-admin-token-0123456789"
REFRESH_S = 1.0
BOUND_S = REFRESH_S + 1.0  # a refresh, one store read, and slack for a loaded machine


def _keys(config: Path, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["keys", *args, "--config", str(config)]) == 0
    return out.getvalue()


def _create(config: Path, name: str, scopes: str, *extra: str) -> tuple[str, str]:
    printed = _keys(config, "create", "--name", name, "--scopes", scopes, *extra)
    key = printed.strip().splitlines()[-1]
    return key.split("_")[1], key


def test_keys_scopes_revocation_and_limits_on_a_real_server(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TUNESERVE_ADMIN_TOKEN", TOKEN)
    config = write_serving_config(
        tmp_path / "serving.toml",
        {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora-cpu-fp32"]},
        "baseline", workers=2, auth={"require_keys": True, "refresh_s": REFRESH_S},
    )  # fmt: skip
    keys = {scope: _create(config, f"secret-name-{scope}", scope)
            for scope in ("predict", "feedback", "report", "admin")}  # fmt: skip
    keys["limited"] = _create(config, "secret-name-limited", "predict", "--rate", "0.01",
                              "--burst", "2")  # fmt: skip
    server = start_server(config)
    url = server.url

    def call(method: str, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"X-API-Key": key} if key else {}
        return httpx.request(method, url + path, headers=headers, timeout=30, **kw)

    for path in ("/livez", "/readyz", "/metrics", "/docs.json", "/"):
        assert call("GET", path).status_code == 200, path
    assert call("POST", "/predict", json={"text": "good"}).status_code == 401

    predicted = call("POST", "/predict", keys["predict"][1], json={"text": "good"})
    assert predicted.status_code == 200 and predicted.headers["ratelimit-limit"] == "50"
    prediction_id = predicted.json()["prediction_id"]
    allowed = [("POST", "/feedback", "feedback", {"json": {"prediction_id": prediction_id,
                                                            "label": "positive"}}),
               ("GET", "/ab/report", "report", {}), ("GET", "/ab/config", "report", {}),
               ("PUT", "/ab/config", "admin", {"json": {"coverage": 1.0}})]  # fmt: skip
    for method, path, scope, kw in allowed:
        assert call(method, path, keys[scope][1], **kw).status_code == 200, (path, scope)
        for other in ("predict", "feedback", "report"):
            if other != scope:
                refused = call(method, path, keys[other][1], **kw)
                assert refused.status_code == 403, (path, other)
                assert refused.json()["kind"] == "forbidden"
    for scope in ("feedback", "report"):
        assert call("POST", "/predict", keys[scope][1], json={"text": "x"}).status_code == 403
    assert call("POST", "/predict", keys["admin"][1], json={"text": "x"}).status_code == 200
    token = httpx.put(f"{url}/ab/config", json={"coverage": 1.0},
                      headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert token.status_code == 200
    assert call("GET", "/models", keys["feedback"][1]).status_code == 200  # metadata: any key

    # a key made while serving works within the bound, in every worker (fresh connections)
    new_id, new_key = _create(config, "secret-name-new", "predict")
    made = time.monotonic()
    while call("POST", "/predict", new_key, json={"text": "x"}).status_code != 200:
        assert time.monotonic() - made < BOUND_S, "a new key was refused too long"
        time.sleep(0.05)
    time.sleep(max(0.0, made + BOUND_S - time.monotonic()))  # every worker has read it now
    assert all(call("POST", "/predict", new_key, json={"text": "x"}).status_code == 200
               for _ in range(10))  # fmt: skip

    # a key revoked while serving is refused by every worker within the bound, no restart
    revoked_id, revoked_key = keys["predict"]
    _keys(config, "revoke", revoked_id)
    revoked = time.monotonic()
    while call("POST", "/predict", revoked_key, json={"text": "x"}).status_code != 401:
        assert time.monotonic() - revoked < BOUND_S, "a revoked key still worked"
        time.sleep(0.05)
    time.sleep(max(0.0, revoked + BOUND_S - time.monotonic()))  # every worker has read it now
    answers = [call("POST", "/predict", revoked_key, json={"text": "x"}) for _ in range(10)]
    assert {r.status_code for r in answers} == {401}
    assert f"API key {revoked_id} was revoked" in answers[0].json()["error"]

    # burst 2 across 2 workers: 1 each, so at most 2 of 6 pass, the rest 429 with headers
    limited_id, limited_key = keys["limited"]
    answers = [call("POST", "/predict", limited_key, json={"text": "x"}) for _ in range(6)]
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 429} and 1 <= codes.count(200) <= 2, codes
    for r in answers:
        assert r.headers["ratelimit-limit"] == "1" and "ratelimit-reset" in r.headers
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 99 and r.json()["kind"] == "rate_limited"
            assert r.headers["ratelimit-remaining"] == "0"

    text = call("GET", "/metrics").text
    by_key: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tuneserve_key_requests_total":
                by_key[(sample.labels["key_id"], sample.labels["outcome"])] = sample.value
    assert by_key[(limited_id, "429")] == codes.count(429)
    assert by_key[(revoked_id, "401")] >= 10 and by_key[(revoked_id, "200")] >= 1
    assert by_key[(new_id, "200")] >= 11 and by_key[("admin-token", "200")] == 1
    # a load test against the keyed service sends the key from $TUNESERVE_API_KEY, and writes it
    # nowhere (predictions and feedback with one key of both scopes; its limit is far above)
    _, load_key = _create(config, "secret-name-load", "predict,feedback", "--rate", "1000",
                          "--burst", "1000")  # fmt: skip
    time.sleep(BOUND_S)  # every worker has read it
    monkeypatch.setenv("TUNESERVE_API_KEY", load_key)
    texts = write_tsv(tmp_path / "texts.tsv", make_sentences(50, seed=3))
    assert main(["loadtest", "--host", url, "--texts", str(texts), "--out", str(tmp_path / "load"),
                 "--run-id", "keyed", "--open-loop", "--rate", "10", "--duration", "3s",
                 "--warmup", "0s", "--feedback", "0.5", "--text-column", "sentence",
                 "--label-column", "label"]) == 0  # fmt: skip
    run = tmp_path / "load" / "keyed"
    overall = json.loads((run / "report.json").read_text())["rows"][0]
    assert overall["requests"] >= 20 and overall["failures"] == 0, overall
    assert all(load_key not in f.read_text(errors="replace") for f in run.rglob("*") if f.is_file())
    server.stop()
    log = server.log.read_text()
    for _, key in keys.values():
        assert key not in text and key not in log
    assert "secret-name" not in text and "secret-name" not in log
    listed = _keys(config, "list")
    assert revoked_id in listed and "secret-name-predict" in listed and revoked_key not in listed
