"""The v2 protocol on a real `bentoml serve` over HTTP: raw JSON, and Triton's own HTTP client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service.conftest import write_serving_config
from tests.service.test_app import metric_value

pytestmark = pytest.mark.slow

TEXTS = ["a gorgeous, witty, seductive movie", "a dull plot", "brilliant acting"]


def _texts_input(texts: list[str], binary: bool = False) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return tensor


def test_v2_over_http_and_with_tritonclient(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    variants = {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora-cpu-fp32"]}
    server = start_server(
        write_serving_config(tmp_path / "serving.toml", variants, "baseline", workers=2)
    )
    url = server.url
    by_name = {v["name"]: v for v in httpx.get(f"{url}/models").json()["variants"]}
    tuned_version = by_name["tuned"]["model_version"]

    # the raw protocol, as curl sends it (the README's example)
    body = {
        "id": "r-1",
        "parameters": {"user_id": "u-42"},
        "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": TEXTS}],
    }
    r = httpx.post(f"{url}/v2/models/tuneserve/infer", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    variant = answer["parameters"]["variant"]
    assert answer["id"] == "r-1" and answer["model_name"] == "tuneserve"
    assert answer["model_version"] == by_name[variant]["model_version"]
    assert r.headers["x-model-variant"] == variant
    assert [o["shape"] for o in answer["outputs"]] == [[3]] * 4
    for path, status, message in [
        ("/v2/models/nope/infer", 404, "unknown model 'nope'"),
        ("/v2/models/tuneserve/versions/1/infer", 404, "has no version '1'"),
    ]:
        r = httpx.post(f"{url}{path}", json=body)
        assert (r.status_code, set(r.json())) == (status, {"error"}) and message in r.text
    big = httpx.post(f"{url}/v2/models/tuned/infer", content=b"x" * 2_000_000)
    assert big.status_code == 413 and set(big.json()) == {"error"}
    assert set(httpx.get(f"{url}/nowhere").json()) == {"error", "kind", "status"}

    # Triton's own client
    before = httpx.get(f"{url}/metrics").text
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tuneserve") and client.is_model_ready("tuned")
        assert client.is_model_ready("tuned", model_version=tuned_version)
        assert not client.is_model_ready("nope")
        assert client.get_server_metadata()["name"] == "tuneserve"
        metadata = client.get_model_metadata("tuneserve")
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert {o["name"] for o in metadata["outputs"]} >= {"label", "score"}

        requested = [triton.InferRequestedOutput(n, binary_data=False) for n in ("label", "score")]
        result = client.infer("tuned", [_texts_input(TEXTS)], outputs=requested, request_id="7")
        labels, scores = result.as_numpy("label"), result.as_numpy("score")
        assert labels is not None and scores is not None and len(labels) == len(scores) == 3
        assert {str(label) for label in labels} <= {"negative", "positive"}
        assert all(0.5 <= float(s) <= 1.0 for s in scores)
        response = result.get_response()
        assert response["id"] == "7" and response["model_version"] == tuned_version
        assert [o["name"] for o in response["outputs"]] == ["label", "score"]
        assert response["parameters"] == {"variant": "tuned", "forced": True}

        # no outputs named: tritonclient asks for binary outputs and reads the JSON ones
        pinned = client.infer("tuned", [_texts_input(["good"])], model_version=tuned_version)
        assert pinned.as_numpy("prediction_id") is not None
        sticky = {
            client.infer(
                "tuneserve", [_texts_input(["good"])], parameters={"user_id": "u-9"}
            ).get_response()["parameters"]["variant"]
            for _ in range(8)
        }
        assert len(sticky) == 1, "one user saw two variants across the two workers"
        with pytest.raises(InferenceServerException, match="binary tensor data extension"):
            client.infer("tuned", [_texts_input(["good"], binary=True)])
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.get_model_metadata("nope")
    finally:
        client.close()
    after = httpx.get(f"{url}/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("tuneserve_requests_total", kind="v2_infer", outcome="200") == 10
    assert delta("tuneserve_predictions_total", variant="tuned") >= 4
    assert delta("tuneserve_forced_predictions_total", variant="tuned") == 4
