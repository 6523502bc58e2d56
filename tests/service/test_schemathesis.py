"""Schemathesis against a live `bentoml serve`: every operation of /docs.json, bounded examples.

No answer may be a 5xx, and every answer must match its documented status, headers, content
type and schema. The admin PUT gets the bearer token, and a check that it rejects calls without.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import Server, write_serving_config

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 50
TOKEN = "schemathesis-admin-token"


@pytest.fixture(scope="module")
def server(
    tiny_exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("schemathesis")
    config = write_serving_config(
        root / "serving.toml",
        {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora-cpu-fp32"]},
        "baseline",
        workers=1,
        limits={"max_body_bytes": 16384, "max_batch_texts": 8},
    )
    os.environ["TUNESERVE_ADMIN_TOKEN"] = TOKEN  # the server inherits it
    try:
        server = Server(config, root / "bentoml-home", root / "server.log")
    finally:
        del os.environ["TUNESERVE_ADMIN_TOKEN"]
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_every_operation_answers_as_documented(server: Server) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    # The service validates beyond what the document can say (ids it issued, the models' labels,
    # weights that can be routed) and answers those 400 or 404 in the error shape: so a
    # schema-valid request may be refused, and the other checks check how.
    BEYOND_SCHEMA = [positive_data_acceptance]

    document = httpx.get(f"{server.url}/docs.json").json()
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(op.label for op in operations) == sorted(
        f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops
    )
    failures: list[str] = []
    statuses: dict[str, set[int]] = defaultdict(set)
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call_and_validate(
                base_url=server.url, headers=headers, timeout=30, excluded_checks=BEYOND_SCHEMA
            )
            statuses[case.operation.label].add(response.status_code)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failures, then all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures) + "\n" + server.log.read_text()[-3000:]
    for label in ("POST /predict", "POST /predict_batch", "PUT /ab/config", "GET /ab/report"):
        assert 200 in statuses[label], f"{label} never succeeded: {sorted(statuses[label])}"
    assert 400 in statuses["POST /predict"] and 404 in statuses["POST /feedback"]
