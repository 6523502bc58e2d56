"""Shadow traffic and guardrails in a real `bentoml serve` with two workers, over HTTP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_sentences
from tests.service.conftest import write_serving_config
from tests.service.test_app import metric_value

pytestmark = pytest.mark.slow

TEXTS = [t for t, _ in make_sentences(50, seed=21)]


def _config(tmp_path: Path, exports: dict[str, Path], **sections: Any) -> Path:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    return write_serving_config(
        tmp_path / "serving.toml", variants, "baseline", workers=2, **sections
    )


def _spread(url: str, n: int, start: int = 0, **body: Any) -> list[str]:
    """POST /predict n times on new connections (so both workers get some), sticky users."""
    variants = []
    with httpx.Client(timeout=30) as client:
        for i in range(start, start + n):
            payload = {"text": TEXTS[i % len(TEXTS)], "user_id": f"u{i}", **body}
            r = client.post(f"{url}/predict", json=payload, headers={"Connection": "close"})
            assert r.status_code == 200, r.text
            variants.append(r.json()["variant"])
    return variants


def test_a_guardrail_trip_reaches_both_workers(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    guard = {"max_p99_ms": 0.001, "min_requests": 10, "check_interval_s": 0.2}
    server = start_server(_config(tmp_path, tiny_exports, guardrails=guard))
    seen = _spread(server.url, 60)
    assert "tuned" in seen
    deadline = time.monotonic() + 10
    while "tuned" not in httpx.get(f"{server.url}/ab/config").json()["disabled"]:
        assert time.monotonic() < deadline, "the guardrail never tripped"
        time.sleep(0.1)
    time.sleep(1.0)  # about a second for the other worker to follow
    assert set(_spread(server.url, 60, start=1000)) == {"baseline"}
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric_value(metrics, "tuneserve_guardrail_trips_total", variant="tuned") >= 1
    assert metric_value(metrics, "tuneserve_variant_enabled", variant="tuned") == 0
    assert metric_value(metrics, "tuneserve_experiment_leader") == 1  # one of the two workers
    assert metric_value(metrics, "tuneserve_experiment_state_version") >= 2
    report = httpx.get(f"{server.url}/ab/report").json()
    assert [t["kind"] for t in report["guardrail_trips"]][:1] == ["p99_latency"]
    server.stop()
    log = server.log.read_text()
    assert "guardrail: tuned taken out of rotation (p99_latency" in log
    assert log.count("experiment leader: this worker") >= 1  # the leader said so
    # each worker ends on the tripped state (it adopted or made the change)
    for worker in ("tuneserve:1]", "tuneserve:2]"):
        assert any(
            worker in line and "shares {'baseline': 1.0, 'tuned': 0.0}" in line
            for line in log.splitlines()
        ), f"worker {worker} never used the state without tuned"


def test_shadow_scores_requests_on_both_workers(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    config = _config(tmp_path, tiny_exports, shadow={"variant": "tuned", "share": 1.0})
    server = start_server(config)
    _spread(server.url, 50, variant="baseline")
    deadline = time.monotonic() + 10
    while True:
        metrics = httpx.get(f"{server.url}/metrics").text
        scored = sum(metric_value(metrics, "tuneserve_shadow_predictions_total", variant="tuned",
                                  outcome=o) for o in ("agree", "disagree"))  # fmt: skip
        report = httpx.get(f"{server.url}/ab/report").json()
        if scored == 50 and report["shadow"] and report["shadow"][0]["scored"] == 50:
            break
        assert time.monotonic() < deadline, f"{scored} of 50 shadow-scored: {report['shadow']}"
        time.sleep(0.2)
    skipped = metric_value(metrics, "tuneserve_shadow_predictions_total", outcome="skipped")
    assert skipped == 0  # one request at a time: every worker had idle moments
