"""deploy/: promtool checks the config and rules and runs their unit tests; `make observe` runs a
real Prometheus against a real service and the metric comes back through its HTTP API."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.loadtests.conftest import require_tool
from tests.service.conftest import free_port

PROM = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "tuneserve.json"
ALERTS = {
    "TuneserveHighErrorRate", "TuneserveP99LatencyHigh", "TuneserveVariantInferenceSlow",
    "TuneserveGuardrailTripped", "TuneserveSampleRatioMismatch",
    "TuneservePredictionLogDropping", "TuneserveNotReady",
}  # fmt: skip


def _promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    command = [require_tool("promtool"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config_and_rules_and_their_tests_pass() -> None:
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in config.stdout
    tests = _promtool("test", "rules", "alerts_test.yml")
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_promtool_rejects_a_broken_rule_and_a_wrong_expectation(tmp_path: Path) -> None:
    rules = (PROM / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(rules.replace("> 0.01", "> > 0.01", 1))
    broken = _promtool("check", "rules", "alerts.yml", cwd=tmp_path)
    assert broken.returncode != 0
    assert "parse error" in broken.stdout + broken.stderr
    # the unit tests can fail: raise the latency bound and the latency alert must not fire
    (tmp_path / "alerts.yml").write_text(rules.replace("\n            > 0.1\n",
                                                       "\n            > 0.3\n", 1))  # fmt: skip
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    failing = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert failing.returncode != 0
    assert "alertname: TuneserveP99LatencyHigh" in failing.stdout + failing.stderr


def _exposed_names() -> set[str]:
    """Every series name the service's metrics module can expose."""
    from prometheus_client.metrics import MetricWrapperBase

    import service.metrics as metrics

    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            names |= {value._name + s for s in suffixes.get(value._type, [""])}
    return names


def _referenced_names() -> dict[str, set[str]]:
    exprs = {"alerts.yml": (PROM / "alerts.yml").read_text()}
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs["tuneserve.json"] = "\n".join(t["expr"] for p in panels for t in p["targets"])
    return {where: set(re.findall(r"\btuneserve_[a-z_]+", text)) for where, text in exprs.items()}


def test_rules_and_dashboard_use_the_service_metric_names(tuneserve_server: Any) -> None:
    exposed = _exposed_names()
    for where, names in _referenced_names().items():
        assert names and names <= exposed, f"{where}: unknown metrics {sorted(names - exposed)}"
    # and the names are the ones a real /metrics page carries (after a prediction)
    url = tuneserve_server.url
    assert httpx.post(f"{url}/predict", json={"text": "good film"}, timeout=10).status_code == 200
    page = httpx.get(f"{url}/metrics", timeout=10).text
    live = {s.name for f in text_string_to_metric_families(page) for s in f.samples}
    for name in ("tuneserve_requests_total", "tuneserve_request_seconds_bucket",
                 "tuneserve_inference_seconds_bucket", "tuneserve_ready",
                 "tuneserve_variant_enabled"):  # fmt: skip
        assert name in live, f"{name} not on a real /metrics page"


@pytest.mark.slow
def test_make_observe_scrapes_the_service(tuneserve_server: Any, tmp_path: Path) -> None:
    require_tool("prometheus")
    url = tuneserve_server.url
    for i in range(5):
        body = {"text": "a lovely film", "user_id": f"u{i}"}
        assert httpx.post(f"{url}/predict", json=body, timeout=10).status_code == 200
    prom_port = free_port()
    command = ["make", "--no-print-directory", "observe", f"PORT={tuneserve_server.port}",
               "HOST=127.0.0.1", f"PROM_PORT={prom_port}", f"OBSERVE_DIR={tmp_path / 'obs'}",
               "SCRAPE_INTERVAL=1s"]  # fmt: skip
    log = tmp_path / "prometheus.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    query = 'sum(tuneserve_requests_total{job="tuneserve",kind="predict",outcome="200"})'
    try:
        value, deadline = None, time.monotonic() + 45
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"make observe exited: {log.read_text()[-2000:]}"
            try:
                result = httpx.get(f"{api}/query", params={"query": query}, timeout=5).json()
                if result["data"]["result"]:
                    value = float(result["data"]["result"][0]["value"][1])
                    if value >= 5:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert value is not None and value >= 5, f"no metric via Prometheus: {value}"
        targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
        assert [(t["labels"]["instance"], t["health"]) for t in targets] == [
            (f"127.0.0.1:{tuneserve_server.port}", "up")
        ]
        groups = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        loaded = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        assert set(loaded) == ALERTS and set(loaded.values()) <= {"ok", "unknown"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
