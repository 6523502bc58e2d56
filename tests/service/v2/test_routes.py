"""The v2 protocol's routes in process (Starlette's test client over `Service.to_asgi()`)."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from service.middleware import endpoint_kind
from tests.service.conftest import asgi_app, load_app, write_serving_config
from tests.service.test_app import metric_value
from tests.service.test_predictor import offline_probs

LIMITS = {"max_body_bytes": 65536, "max_batch_texts": 8, "max_tokens": 16}
TEXTS = ["a gorgeous, witty film", "a dull and lifeless plot", "brilliant acting"]


@pytest.fixture(scope="module")
def served(
    tiny_exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Path]]:
    config = write_serving_config(
        tmp_path_factory.mktemp("serving") / "serving.toml",
        {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora-cpu-fp32"]},
        "baseline",
        workers=1,
        limits=LIMITS,
    )
    with TestClient(asgi_app(config), raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.05)
        yield test_client, config.parent / "experiment.sqlite"


@pytest.fixture(scope="module")
def client(served: tuple[TestClient, Path]) -> TestClient:
    return served[0]


def infer_body(texts: list[str], **fields: Any) -> dict[str, Any]:
    tensor = {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
    return {"inputs": [tensor], **fields}


def outputs(answer: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in answer["outputs"]}


def versions(client: TestClient) -> dict[str, str]:
    return {v["name"]: v["model_version"] for v in client.get("/models").json()["variants"]}


def test_server_metadata_live_and_ready(client: TestClient) -> None:
    assert client.get("/v2").json() == {"name": "tuneserve", "version": "0.1.0", "extensions": []}
    live, ready = client.get("/v2/health/live"), client.get("/v2/health/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


def test_model_metadata_of_the_experiment_and_of_a_variant(client: TestClient) -> None:
    served = versions(client)
    tensors = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]},
            {"name": "truncated", "datatype": "BOOL", "shape": [-1]},
        ],
    }
    experiment = client.get("/v2/models/tuneserve").json()
    assert experiment == {
        "name": "tuneserve",
        "versions": [served["baseline"], served["tuned"]],
        "platform": "onnx_onnxv1",
        **tensors,
    }
    tuned = client.get("/v2/models/tuned").json()
    assert tuned == {
        "name": "tuned",
        "versions": [served["tuned"]],
        "platform": "onnx_onnxv1",
        **tensors,
    }
    pinned = client.get(f"/v2/models/tuned/versions/{served['tuned']}")
    assert pinned.status_code == 200 and pinned.json()["versions"] == [served["tuned"]]
    for path in (
        "/v2/models/tuneserve/ready",
        "/v2/models/baseline/ready",
        f"/v2/models/tuneserve/versions/{served['baseline']}/ready",
    ):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.json() == {"name": path.split("/")[3], "ready": True}


def test_infer_answers_the_spec_shape_with_the_models_numbers(
    client: TestClient, tiny_exports: dict[str, Path]
) -> None:
    r = client.post("/v2/models/tuned/infer", json=infer_body(TEXTS, id="42"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"model_name", "model_version", "id", "parameters", "outputs"}
    assert answer["model_name"] == "tuned" and answer["id"] == "42"
    assert answer["model_version"] == versions(client)["tuned"]
    assert answer["parameters"] == {"variant": "tuned", "forced": True}
    assert r.headers["x-model-variant"] == "tuned"
    assert [(o["name"], o["datatype"], o["shape"]) for o in answer["outputs"]] == [
        ("label", "BYTES", [3]),
        ("score", "FP32", [3]),
        ("prediction_id", "BYTES", [3]),
        ("truncated", "BOOL", [3]),
    ]
    data = outputs(answer)
    probs = offline_probs(tiny_exports["lora-cpu-fp32"], TEXTS)
    np.testing.assert_allclose(data["score"], probs.max(axis=1), atol=1e-6)
    assert data["label"] == [["negative", "positive"][i] for i in probs.argmax(axis=1)]
    assert data["truncated"] == [False] * 3 and len(set(data["prediction_id"])) == 3


def test_the_requested_outputs_only_in_the_order_asked_and_nested_input(client: TestClient) -> None:
    nested = {
        "inputs": [
            {
                "name": "text",
                "shape": [2, 1],
                "datatype": "BYTES",
                "data": [["good"], ["awful " * 40]],
            }
        ],
        "outputs": [{"name": "truncated"}, {"name": "label"}],
    }
    r = client.post("/v2/models/baseline/infer", json=nested)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["truncated", "label"]
    assert outputs(r.json())["truncated"] == [False, True]
    assert "id" not in r.json()


def test_the_experiment_name_routes_by_the_ab_rules(
    served: tuple[TestClient, Path],
) -> None:
    from service.routing import Router

    client, store = served
    router = Router({"baseline": 1, "tuned": 1}, "baseline", salt="tuneserve-1")
    served_versions = versions(client)
    for i in range(20):
        uid = f"v2-user-{i}"
        expected = router.choose(user_id=uid).variant
        body = infer_body(["good"], parameters={"user_id": uid})
        by_parameter = client.post("/v2/models/tuneserve/infer", json=body).json()
        by_header = client.post(
            "/v2/models/tuneserve/infer", json=infer_body(["good"]), headers={"X-User-Id": uid}
        ).json()
        assert (
            by_parameter["parameters"]
            == by_header["parameters"]
            == {"variant": expected, "forced": False}
        )
        assert by_parameter["model_name"] == "tuneserve"
        assert by_parameter["model_version"] == served_versions[expected]
    seen = {
        client.post("/v2/models/tuneserve/infer", json=infer_body(["good", "bad"])).json()[
            "parameters"
        ]["variant"]
        for _ in range(40)
    }
    assert seen == {"baseline", "tuned"}
    # answered from one variant per request; logged like /predict's, forced apart
    answer = client.post(
        "/v2/models/tuneserve/infer", json=infer_body(TEXTS, parameters={"user_id": "v2-log"})
    ).json()
    pinned = client.post(
        f"/v2/models/tuneserve/versions/{served_versions['tuned']}/infer", json=infer_body(["good"])
    ).json()
    assert pinned["parameters"] == {"variant": "tuned", "forced": True}
    rows = _logged(store, outputs(answer)["prediction_id"] + outputs(pinned)["prediction_id"])
    variant = answer["parameters"]["variant"]
    assert rows[:3] == [(variant, served_versions[variant], 0, "user")] * 3
    assert rows[3] == ("tuned", served_versions["tuned"], 1, "forced")


def _logged(store: Path, ids: list[str]) -> list[tuple[Any, ...]]:
    """The prediction-log rows of ``ids`` (variant, model_version, forced, unit), once written."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(store) as conn:
            found = {
                row[0]: row[1:]
                for row in conn.execute(
                    f"SELECT id, variant, model_version, forced, unit FROM predictions WHERE id IN "
                    f"({', '.join('?' * len(ids))})",
                    ids,
                )
            }
        if len(found) == len(ids) or time.monotonic() > deadline:
            return [found.get(i, ()) for i in ids]
        time.sleep(0.05)


def test_feedback_takes_a_v2_prediction_id_and_metrics_count_v2(client: TestClient) -> None:
    before = client.get("/metrics").text
    answer = client.post("/v2/models/tuned/infer", json=infer_body(["good", "bad"])).json()
    client.post("/v2/models/tuned/infer", json=infer_body([""]))
    after = client.get("/metrics").text
    pid = outputs(answer)["prediction_id"][0]
    fed = client.post("/feedback", json={"prediction_id": pid, "label": "positive"})
    assert fed.json() == {"prediction_id": pid, "label": "positive", "status": "stored"}

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("tuneserve_requests_total", kind="v2_infer", outcome="200") == 1
    assert delta("tuneserve_requests_total", kind="v2_infer", outcome="400") == 1
    assert delta("tuneserve_predictions_total", variant="tuned") == 2
    assert delta("tuneserve_forced_predictions_total", variant="tuned") == 2
    assert delta("tuneserve_errors_total", kind="invalid_input") == 1
    assert endpoint_kind("/v2/models/tuneserve/versions/x@y/infer") == "v2_infer"
    assert endpoint_kind("/v2/health/ready") == endpoint_kind("/v2") == "v2"


INFER = "/v2/models/tuneserve/infer"
GOOD = json.dumps(infer_body(["good"])).encode()
ERRORS = [
    ("post", INFER, b'{"inputs": [', {}, 400, "not valid JSON"),
    ("post", INFER, b"[1]", {}, 400, "the body must be a JSON object"),
    ("post", INFER, b"[" * 60_000, {}, 400, "not valid JSON"),
    ("post", INFER, b"{}", {}, 400, "inputs is required"),
    (
        "post",
        INFER,
        json.dumps(infer_body([" "])).encode(),
        {},
        400,
        r"input 'text' data\[0\] is empty or whitespace",
    ),
    (
        "post",
        INFER,
        json.dumps(
            {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        ).encode(),
        {},
        400,
        "must have datatype BYTES",
    ),
    (
        "post",
        INFER,
        json.dumps(
            {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}
        ).encode(),
        {},
        400,
        r"shape \[2\] \(2 elements\) but its data holds 1",
    ),
    (
        "post",
        INFER,
        json.dumps(infer_body(["a"] * 9)).encode(),
        {},
        413,
        "holds 9 items; at most 8 per request",
    ),
    (
        "post",
        INFER,
        json.dumps(infer_body(["a" * 70_000])).encode(),
        {},
        413,
        "larger than 65536 bytes",
    ),
    (
        "post",
        INFER,
        GOOD,
        {"Inference-Header-Content-Length": "40"},
        400,
        "binary tensor data extension is not supported",
    ),
    ("post", INFER, GOOD, {"X-User-Id": " "}, 400, "user_id must be a non-empty string"),
    (
        "post",
        "/v2/models/resnet/infer",
        GOOD,
        {},
        404,
        "unknown model 'resnet': this server serves 'tuneserve' .* 'baseline', 'tuned'",
    ),
    (
        "post",
        "/v2/models/tuned/versions/7/infer",
        GOOD,
        {},
        404,
        "model 'tuned' has no version '7': it serves t-lora-cpu-fp32@",
    ),
    (
        "post",
        "/v2/models/tuneserve/versions/7/infer",
        GOOD,
        {},
        404,
        "model 'tuneserve' has no version '7': it serves t-head-cpu-int8@.*, t-lora-cpu-fp32@",
    ),
    ("get", "/v2/models/resnet", None, {}, 404, "unknown model 'resnet'"),
    ("get", "/v2/models/resnet/ready", None, {}, 404, "unknown model 'resnet'"),
    ("get", INFER, None, {}, 405, "Method Not Allowed"),
    ("get", "/v2/repository/index", None, {}, 404, "Not Found"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "message"), ERRORS)
def test_errors_answer_the_v2_shape_with_the_service_status(
    client: TestClient,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    if method == "post":
        headers = {"content-type": "application/json", **headers}
        r = client.post(path, content=body, headers=headers)
    else:
        r = client.get(path)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and r.headers["content-type"] == "application/json"
    assert re.search(message, r.json()["error"]), r.json()["error"]


def test_a_worker_still_starting_answers_503_with_retry_after_in_the_v2_shape(
    tiny_exports: dict[str, Path], tmp_path: Path
) -> None:
    from service.v2 import V2ErrorShape

    config = write_serving_config(
        tmp_path / "serving.toml",
        {"only": tiny_exports["lora"]},
        "only",
        limits={"retry_after_s": 7},
    )
    routes = load_app(config).routes  # the mounted app alone: no service, so no predictor
    with TestClient(V2ErrorShape(routes), raise_server_exceptions=False) as early:
        assert early.get("/v2/health/live").json() == {"live": True}
        for method, path in [
            ("get", "/v2/health/ready"),
            ("get", "/v2/models/only/ready"),
            ("get", "/v2/models/only"),
            ("post", "/v2/models/only/infer"),
        ]:
            r = early.request(method, path, json=infer_body(["good"]))
            assert r.status_code == 503 and r.headers["retry-after"] == "7", path
            assert r.json() == {"error": "the service is still starting; retry shortly"}
        # outside /v2 the service's own shape stays
        assert set(early.get("/models").json()) == {"error", "kind", "status"}
