"""The OpenAPI document at /docs.json against the app's routes and the error contract."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from tests.service.conftest import asgi_app, write_serving_config

# BentoML's own documentation routes: its Swagger UI page, the assets it loads, its schema.
DOCUMENTATION_ROUTES = {"/", "/schema.json", "/static_content"}
METHODS = {"GET", "POST", "PUT"}


@pytest.fixture(scope="module")
def app_and_client(
    tiny_exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, TestClient]]:
    config = write_serving_config(
        tmp_path_factory.mktemp("serving") / "serving.toml",
        {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora-cpu-fp32"]},
        "baseline",
        workers=1,
    )
    app = asgi_app(config)
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.05)
        yield app, client


@pytest.fixture(scope="module")
def document(app_and_client: tuple[Any, TestClient]) -> dict[str, Any]:
    r = app_and_client[1].get("/docs.json")
    assert r.status_code == 200
    return dict(r.json())


def app_routes(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route, mounted ones included."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Route):
            path = prefix + route.path
            found |= {(m, path) for m in (route.methods or ()) if m in METHODS}
        elif isinstance(route, Mount):
            path = prefix + route.path
            inner = getattr(route.app, "routes", None)
            if inner is None or path in DOCUMENTATION_ROUTES:
                continue
            found |= app_routes(inner, prefix + route.path.rstrip("/"))
    return found


def test_every_route_is_documented_and_every_documented_path_is_a_route(
    app_and_client: tuple[Any, TestClient], document: dict[str, Any]
) -> None:
    served = {(m, p) for m, p in app_routes(app_and_client[0].routes)
              if p not in DOCUMENTATION_ROUTES}  # fmt: skip
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert served == documented
    assert {p for _, p in served} >= {"/predict", "/predict_batch", "/feedback", "/models",
                                       "/ab/report", "/ab/config", "/livez", "/readyz",
                                       "/metrics"}  # fmt: skip
    v2 = {("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")}
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        v2 |= {("GET", model), ("GET", f"{model}/ready"), ("POST", f"{model}/infer")}
    assert served >= v2


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(document)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in document["paths"].values())


def test_request_bodies_are_the_endpoints_own(document: dict[str, Any]) -> None:
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["text"]
    assert set(body["schema"]["properties"]) == {"text", "user_id", "variant"}
    batch = document["paths"]["/predict_batch"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"]["required"] == ["texts"]


def test_every_error_answer_has_the_error_shape_and_its_codes(document: dict[str, Any]) -> None:
    expected = {
        ("post", "/predict"): {"400", "413", "429", "503", "504"},
        ("post", "/predict_batch"): {"400", "413", "429", "503", "504"},
        ("post", "/feedback"): {"400", "404", "413", "429", "503"},
        ("put", "/ab/config"): {"400", "401", "403", "409", "413", "429", "503"},
        ("get", "/ab/report"): {"400", "503"},
    }
    for (method, path), codes in expected.items():
        responses = document["paths"][path][method]["responses"]
        assert {c for c in responses if c != "200"} == codes, (method, path)
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            for code, answer in op["responses"].items():
                if code.startswith(("4", "5")):
                    schema = answer["content"]["application/json"]["schema"]
                    # the v2 protocol's routes answer its own shape, {"error": message}
                    shape = "V2Error" if path.startswith("/v2") else "Error"
                    assert schema == {"$ref": f"#/components/schemas/{shape}"}, (method, path)
                if code == "503":
                    assert "Retry-After" in answer["headers"], (method, path)
    v2_infer = document["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
    assert {c for c in v2_infer if c != "200"} == {"400", "404", "413", "429", "503", "504"}
    assert document["components"]["schemas"]["V2Error"]["required"] == ["error"]
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "kind", "status"]
    kinds = {"invalid_input", "unauthorized", "forbidden", "not_found", "too_large",
             "overloaded", "unavailable", "deadline", "conflict"}  # fmt: skip
    assert kinds <= set(error["properties"]["kind"]["enum"])


def test_swagger_ui_still_loads_the_document(app_and_client: tuple[Any, TestClient]) -> None:
    client = app_and_client[1]
    page = client.get("/")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert json.loads(client.get("/docs.json").text)["openapi"] == "3.1.0"
