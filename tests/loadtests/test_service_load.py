"""A short real Locust run against a real `bentoml serve` of the tiny models: the SLO gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tuneserve.cli import main

pytestmark = pytest.mark.slow


def _feedback_stored(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tuneserve_feedback_total" and sample.labels["outcome"] == "stored"
    )


def test_loose_slo_passes_and_impossible_slo_fails(
    tmp_path: Path, tuneserve_server: Any, traffic_tsv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = tuneserve_server.url
    before = _feedback_stored(url)
    argv = ["loadtest", "--host", url, "--texts", str(traffic_tsv), "--out", str(tmp_path),
            "--users", "4", "--spawn-rate", "4", "--duration", "4s", "--warmup", "1s"]  # fmt: skip
    loose = [*argv, "--run-id", "loose", "--slo", "p99=5s,fail=1%", "--feedback", "1",
             "--feedback-delay", "0.2s"]  # fmt: skip
    assert main(loose) == 0
    out = capsys.readouterr().out
    assert "SLO met: p99=5s,fail=1%" in out
    assert "load generator on the same host as the server (127.0.0.1), sharing its CPUs" in out

    run = tmp_path / "loose"
    report = json.loads((run / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"all", "baseline", "tuned", "feedback"}
    assert rows["all"]["requests"] == rows["baseline"]["requests"] + rows["tuned"]["requests"]
    assert rows["all"]["requests"] > 20 and rows["all"]["failures"] == 0
    # integer labels 0/1 were posted under the models' names (GET /models): none refused
    assert rows["feedback"]["requests"] > 10 and rows["feedback"]["failures"] == 0
    assert report["meta"]["label_names"] == {"0": "negative", "1": "positive"}
    assert _feedback_stored(url) - before >= rows["feedback"]["requests"]
    # Locust's own outputs, with per-variant rows, next to ours
    stats = (run / "locust_stats.csv").read_text()
    assert "/predict [baseline]" in stats and "/predict [tuned]" in stats
    history = (run / "locust_stats_history.csv").read_text().splitlines()
    assert len(history) > 4  # full history: one row per second and name
    for name in ("locust.html", "locust.json", "latency_over_time.png", "latency_vs_load.png"):
        assert (run / name).stat().st_size > 1000, name
    assert "sharing its CPUs" in (run / "report.md").read_text()

    strict = [*argv, "--run-id", "strict", "--slo", "p99=0.1ms,fail=1%"]
    assert main(strict) == 3
    out = capsys.readouterr().out
    broken = next(line for line in out.splitlines() if line.startswith("SLO broken: "))
    assert "> 0.1ms (all)" in broken and "> 0.1ms (tuned)" in broken
    assert "failures" not in broken  # only the latency bound broke


def test_serve_option_starts_the_service_and_stops_it(
    tmp_path: Path, tiny_exports: dict[str, Path], traffic_tsv: Path
) -> None:
    from tests.service.conftest import free_port, write_serving_config

    variants = {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora"]}
    config = write_serving_config(tmp_path / "serving.toml", variants, "baseline", workers=1)
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["loadtest", "--serve", str(config), "--host", url, "--texts", str(traffic_tsv),
            "--out", str(tmp_path), "--run-id", "served", "--open-loop", "--rate", "20",
            "--duration", "3s", "--warmup", "1s", "--slo", "fail=1%"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "served" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["all"]["requests"] >= 40 and rows["all"]["failures"] == 0
    with pytest.raises(httpx.HTTPError):  # the service it started is gone
        httpx.get(f"{url}/livez", timeout=2)
