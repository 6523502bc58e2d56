"""Distributed load tests: Locust's master and workers (real subprocesses) against a local
server, the workers' histograms merged on the master, checked against a raw per-request dump.

Low rates: a master, two workers and the server share this machine's CPUs, and the comparisons
test correctness, not capacity."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtests.stats import read_raw
from tests.loadtests.conftest import within_precision
from tests.service.conftest import free_port
from tuneserve.cli import main

pytestmark = pytest.mark.slow
CLI = "import sys; from tuneserve.cli import main; sys.exit(main(sys.argv[1:]))"


def _rows(run: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in json.loads((run / "report.json").read_text())["rows"]}


def _reference(run: Path) -> tuple[int, np.ndarray]:
    """Requests and successful latencies of the measured interval, from the raw dump."""
    measured = [s for s in read_raw(run) if s.measured and s.kind in ("predict", "dropped")]
    return len(measured), np.array([s.latency_ms for s in measured if 200 <= s.status < 300])


def _check_against_raw(run: Path) -> dict[str, Any]:
    overall = _rows(run)["all"]
    requests, latencies = _reference(run)
    assert overall["requests"] == requests
    for key, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        exact = float(np.percentile(latencies, q, method="inverted_cdf"))
        # percentile definition: tuneserve/percentiles.py
        assert within_precision(overall[f"{key}_ms"], exact), (run.name, key, overall, exact)
    return overall


def test_two_workers_and_one_process_offer_the_same_load(
    tmp_path: Path, fake_server: Any, traffic_tsv: Path
) -> None:
    server = fake_server(lambda: time.sleep(0.002))
    common = ["loadtest", "--host", server.url, "--texts", str(traffic_tsv), "--out",
              str(tmp_path), "--open-loop", "--rate", "60", "--duration", "4s", "--warmup", "1s",
              "--raw-requests", "--slo", "fail=1%"]  # fmt: skip
    assert main([*common, "--run-id", "one"]) == 0
    assert main([*common, "--run-id", "two", "--processes", "2"]) == 0
    one, two = _check_against_raw(tmp_path / "one"), _check_against_raw(tmp_path / "two")
    assert abs(two["requests"] - one["requests"]) <= 0.02 * one["requests"]
    assert 0.75 * 240 < one["requests"] < 1.25 * 240  # 60/s for 4 s offered in total
    assert one["dropped"] == two["dropped"] == 0
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["meta"]["workers"] == report["meta"]["workers_finished"] == 2
    assert {"all", "a", "b"} <= set(_rows(tmp_path / "two"))
    assert "30 per worker" in report["mode"] and "2 worker processes" in report["mode"]
    # each worker sent its half of the schedule, from its own seed
    dumps = [p.read_text().splitlines() for p in sorted((tmp_path / "two").glob("requests-*"))]
    assert len(dumps) == 2 and abs(len(dumps[0]) - len(dumps[1])) <= 1
    windows = json.loads((tmp_path / "two" / "windows.json").read_text())
    assert len(windows) == 5 and sum(w["sent_per_s"] for w in windows) >= two["requests"]
    # Locust's own outputs come from its master, with one row per variant
    stats = (tmp_path / "two" / "locust_stats.csv").read_text()
    assert "/predict [a]" in stats and "/predict [b]" in stats


def test_closed_loop_users_spread_over_two_workers(
    tmp_path: Path, fake_server: Any, traffic_tsv: Path
) -> None:
    server = fake_server(lambda: time.sleep(0.002))
    argv = ["loadtest", "--host", server.url, "--texts", str(traffic_tsv), "--out",
            str(tmp_path), "--run-id", "closed", "--users", "4", "--spawn-rate", "4", "--rate",
            "10", "--duration", "3s", "--warmup", "1s", "--processes", "2",
            "--raw-requests"]  # fmt: skip
    assert main(argv) == 0
    overall = _check_against_raw(tmp_path / "closed")
    assert 0.6 * 120 < overall["requests"] < 1.3 * 120  # 4 users at 10/s each for 3 s
    meta = json.loads((tmp_path / "closed" / "report.json").read_text())["meta"]
    assert meta["workers"] == meta["workers_finished"] == 2  # the master's flush reached both


def test_a_master_and_workers_started_apart(
    tmp_path: Path, fake_server: Any, traffic_tsv: Path
) -> None:
    """`--master` here, two `--worker` processes as if on other machines (their own folders;
    the master's config decides the load)."""
    server = fake_server(lambda: time.sleep(0.002))
    port = str(free_port())

    def worker(i: int) -> list[str]:
        return ["loadtest", "--worker", "--master-host", "127.0.0.1", "--master-port", port,
                "--texts", str(traffic_tsv), "--out", str(tmp_path / "workers"), "--run-id",
                f"w{i}", "--raw-requests"]  # fmt: skip

    workers = [subprocess.Popen([sys.executable, "-c", CLI, *worker(i)]) for i in range(2)]
    try:
        argv = ["loadtest", "--master", "--expect-workers", "2", "--master-port", port,
                "--host", server.url, "--texts", str(traffic_tsv), "--out", str(tmp_path),
                "--run-id", "master", "--open-loop", "--rate", "40", "--arrivals", "fixed",
                "--duration", "3s", "--warmup", "1s"]  # fmt: skip
        assert main(argv) == 0
        assert [w.wait(timeout=60) for w in workers] == [0, 0]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    overall = _rows(tmp_path / "master")["all"]
    assert overall["requests"] == 120  # 40/s evenly paced for 3 s: 60 from each worker
    raw = [s for w in ("w0", "w1") for s in read_raw(tmp_path / "workers" / w) if s.measured]
    assert len(raw) == 120
    latencies = np.array([s.latency_ms for s in raw if 200 <= s.status < 300])
    exact = float(np.percentile(latencies, 99, method="inverted_cdf"))
    assert within_precision(overall["p99_ms"], exact)
