"""The BentoML service in process (Starlette's test client over `Service.to_asgi()`)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from tests.conftest import make_sentences
from tests.service.conftest import asgi_app, write_serving_config
from tests.service.test_predictor import offline_probs

LIMITS = {"max_body_bytes": 65536, "max_batch_texts": 8, "max_tokens": 16}


@pytest.fixture(scope="module")
def client(
    tiny_exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
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
        yield test_client


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def test_predict_answers_with_the_documented_fields(
    client: TestClient, tiny_exports: dict[str, Path]
) -> None:
    texts = [t for t, _ in make_sentences(20, seed=3)]
    expected = offline_probs(tiny_exports["lora-cpu-fp32"], texts)
    for text, probs in zip(texts, expected, strict=True):
        r = client.post("/predict", json={"text": text, "variant": "tuned", "user_id": "u1"})
        assert r.status_code == 200
        body = r.json()
        assert set(body) >= {"prediction_id", "variant", "model_version", "label", "score",
                             "scores", "truncated"}  # fmt: skip
        assert r.headers["x-model-variant"] == body["variant"] == "tuned"
        assert body["model_version"].startswith("t-lora-cpu-fp32@")
        np.testing.assert_allclose([body["scores"]["negative"], body["scores"]["positive"]],
                                   probs, atol=1e-6)  # fmt: skip
        assert body["score"] == max(body["scores"].values())
        assert body["truncated"] is False


def test_unforced_traffic_reaches_both_variants(client: TestClient) -> None:
    seen = {client.post("/predict", json={"text": "a good film"}).json()["variant"]
            for _ in range(40)}  # fmt: skip
    assert seen == {"baseline", "tuned"}


def test_users_are_sticky_by_body_or_header(client: TestClient) -> None:
    from service.routing import Router

    router = Router({"baseline": 1, "tuned": 1}, "baseline", salt="tuneserve-1")
    for i in range(30):
        uid = f"user-{i}"
        expected = router.choose(user_id=uid).variant
        by_body = client.post("/predict", json={"text": "good", "user_id": uid}).json()["variant"]
        by_header = client.post("/predict", json={"text": "good"}, headers={"X-User-Id": uid})
        assert by_body == by_header.json()["variant"] == expected
        batch = client.post("/predict_batch", json={"texts": ["a", "b"], "user_id": uid})
        assert batch.json()["variant"] == expected


def test_predict_batch_keeps_order_and_flags_truncation(
    client: TestClient, tiny_exports: dict[str, Path]
) -> None:
    texts = ["good", "awful " * 40, "a dull plot", "brilliant acting"]
    r = client.post("/predict_batch", json={"texts": texts, "variant": "tuned"})
    assert r.status_code == 200
    body = r.json()
    assert body["variant"] == r.headers["x-model-variant"] == "tuned"
    answers = body["predictions"]
    assert [a["truncated"] for a in answers] == [False, True, False, False]
    expected = offline_probs(tiny_exports["lora-cpu-fp32"], texts)  # max length 32, not 16
    got = np.array([[a["scores"]["negative"], a["scores"]["positive"]] for a in answers])
    np.testing.assert_allclose(got[[0, 2, 3]], expected[[0, 2, 3]], atol=1e-5)


def test_long_text_is_truncated_not_rejected(client: TestClient) -> None:
    r = client.post("/predict", json={"text": "good " * 10_000})
    assert r.status_code == 200 and r.json()["truncated"] is True


ERROR_CASES = [
    ("post", "/predict", b'{"text": "good", ', 400, "invalid_input", "Invalid JSON"),
    ("post", "/predict", b'{"text": ""}', 400, "invalid_input", "text is empty"),
    ("post", "/predict", b'{"text": " \\n\\t"}', 400, "invalid_input", "text is empty"),
    ("post", "/predict", b'{"text": 5}', 400, "invalid_input", "text: Input should be a valid"),
    ("post", "/predict", b"{}", 400, "invalid_input", "text: Field required"),
    ("post", "/predict", b"[1, 2]", 400, "invalid_input", "invalid request"),
    ("post", "/predict", b"\xff\xfe", 400, "invalid_input", "invalid request"),
    ("post", "/predict", b'{"text": "x", "variant": "v9"}', 400, "invalid_input",
     "unknown variant 'v9'"),
    ("post", "/predict", b'{"text": "x", "user_id": 7}', 400, "invalid_input", "user_id"),
    ("post", "/predict", b'{"text": "x", "user_id": " "}', 400, "invalid_input",
     "user_id must be a non-empty string"),
    ("post", "/predict_batch", b'{"texts": "abc"}', 400, "invalid_input", "texts"),
    ("post", "/predict_batch", b'{"texts": []}', 400, "invalid_input", "non-empty list"),
    ("post", "/predict_batch", b'{"texts": ["a", 1]}', 400, "invalid_input",
     r"texts\[1\] must be a string"),
    ("post", "/predict_batch", json.dumps({"texts": ["a"] * 9}).encode(), 413, "too_large",
     "at most 8 per request"),
    ("post", "/predict", json.dumps({"text": "a" * 70_000}).encode(), 413, "too_large",
     "larger than 65536 bytes"),
    ("get", "/nowhere", None, 404, "not_found", "Not Found"),
    ("get", "/predict", None, 405, "method_not_allowed", "Method Not Allowed"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "kind", "message"), ERROR_CASES)
def test_error_contract(
    client: TestClient, method: str, path: str, body: bytes | None, status: int, kind: str,
    message: str,
) -> None:  # fmt: skip
    if method == "post":
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.get(path)
    assert r.status_code == status, r.text
    payload = r.json()
    assert set(payload) == {"error", "kind", "status"}
    assert payload["kind"] == kind and payload["status"] == status
    assert re.search(message, payload["error"]), payload["error"]
    assert "Traceback" not in r.text


def test_models_livez_readyz(client: TestClient) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    models = client.get("/models").json()
    assert models["ready"] is True and models["control"] == "baseline"
    assert models["batching"] == "off"
    by_name = {v["name"]: v for v in models["variants"]}
    assert by_name["tuned"]["quantization"] == "fp32"
    assert by_name["baseline"]["quantization"].startswith("int8-dynamic")
    assert by_name["tuned"]["adapter_sha256"] and by_name["baseline"]["adapter_sha256"] is None
    assert by_name["tuned"]["provider"] == "CPUExecutionProvider"
    assert by_name["tuned"]["weight"] == pytest.approx(0.5)
    assert by_name["tuned"]["dev_accuracy_at_export"] is not None


def test_metrics_count_what_was_sent(client: TestClient) -> None:
    before = client.get("/metrics").text
    for _ in range(7):
        assert client.post("/predict", json={"text": "good", "variant": "tuned"}).status_code == 200
    for _ in range(3):
        client.post("/predict", json={"text": ""})
    after = client.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("tuneserve_requests_total", kind="predict", outcome="200") == 7
    assert delta("tuneserve_requests_total", kind="predict", outcome="400") == 3
    assert delta("tuneserve_errors_total", kind="invalid_input") == 3
    assert delta("tuneserve_predictions_total", variant="tuned") == 7
    assert delta("tuneserve_forced_predictions_total", variant="tuned") == 7
    assert delta("tuneserve_inference_seconds_count", variant="tuned") == 7
    assert delta("tuneserve_score_count", variant="tuned") == 7
    assert metric_value(after, "tuneserve_model_info", variant="tuned", quantization="fp32") == 1
    assert metric_value(after, "tuneserve_variant_weight", variant="tuned") == pytest.approx(0.5)
    buckets = [s for f in text_string_to_metric_families(after) for s in f.samples
               if s.name == "tuneserve_inference_seconds_bucket"]  # fmt: skip
    bounds = sorted({float(s.labels["le"]) for s in buckets})
    assert bounds[0] == 0.0005 and 10.0 in bounds


def test_deadline_answers_504_in_the_error_shape(
    tiny_exports: dict[str, Path], tmp_path: Path
) -> None:
    config = write_serving_config(
        tmp_path / "serving.toml", {"only": tiny_exports["lora"]}, "only",
        workers=1, limits={"deadline_ms": 0.001},
    )  # fmt: skip
    with TestClient(asgi_app(config), raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = test_client.post("/predict", json={"text": "good"})
    assert r.status_code == 504
    assert r.json() == {
        "error": "the prediction did not finish within 0.001 ms",
        "kind": "deadline",
        "status": 504,
    }


def test_feedback_contract(client: TestClient) -> None:
    answer = client.post("/predict", json={"text": "a lovely film", "user_id": "fb"}).json()
    pid = answer["prediction_id"]
    first = client.post("/feedback", json={"prediction_id": pid, "label": "positive"})
    assert first.status_code == 200
    assert first.json() == {"prediction_id": pid, "label": "positive", "status": "stored"}
    again = client.post("/feedback", json={"prediction_id": pid, "label": "negative"})
    assert again.json() == {"prediction_id": pid, "label": "positive", "status": "duplicate"}
    forged = pid[:-1] + ("0" if pid[-1] != "0" else "1")
    for body, status, message in [
        ({"prediction_id": forged, "label": "positive"}, 404, "no prediction with this id"),
        ({"prediction_id": "not-an-id", "label": "positive"}, 404, "no prediction with this id"),
        ({"prediction_id": pid, "label": "Positive"}, 400, "label must be one of negative, "),
        ({"prediction_id": pid}, 400, "label: Field required"),
        ({"prediction_id": 5, "label": "positive"}, 400, "prediction_id: Input should be"),
    ]:
        r = client.post("/feedback", json=body)
        assert r.status_code == status, r.text
        assert message in r.json()["error"] and r.json()["status"] == status


def test_ab_report_over_http(client: TestClient) -> None:
    report = client.get("/ab/report")
    assert report.status_code == 200
    body = report.json()
    assert body["control"] == "baseline" and [v["variant"] for v in body["variants"]] == [
        "baseline",
        "tuned",
    ]
    assert {"p_value", "always_valid_p_value", "verdict"} <= body["comparisons"][0].keys()
    text = client.get("/ab/report?format=text")
    assert text.status_code == 200 and "verdict:" in text.text
    page = client.get("/ab/report?format=html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h1>A/B report</h1>" in page.text and "Online accuracy over time" in page.text
    bad = client.get("/ab/report?format=pdf")
    assert bad.status_code == 400 and bad.json()["kind"] == "invalid_input"


def test_a_worker_still_starting_answers_503_with_retry_after(
    tiny_exports: dict[str, Path], tmp_path: Path
) -> None:
    """Before BentoML has built the service, the mounted routes have no predictor yet."""
    from tests.service.conftest import load_app

    config = write_serving_config(
        tmp_path / "serving.toml", {"only": tiny_exports["lora"]}, "only",
        limits={"retry_after_s": 7},
    )  # fmt: skip
    routes = load_app(config).routes  # the mounted app alone: no service, so no predictor
    with TestClient(routes, raise_server_exceptions=False) as early:
        for path in ("/models", "/ab/report", "/ab/config"):
            r = early.get(path)
            assert r.status_code == 503 and r.headers["retry-after"] == "7", path
            assert r.json() == {
                "error": "the service is still starting; retry shortly",
                "kind": "unavailable",
                "status": 503,
            }
