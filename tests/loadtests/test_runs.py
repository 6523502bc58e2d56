"""Real Locust runs (subprocesses) against small stdlib servers with known behaviour."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from loadtests.shapes import default_params, spike_tick, step_tick
from tests.loadtests.conftest import Staller
from tuneserve.cli import main

pytestmark = pytest.mark.slow


def _loadtest(tmp_path: Path, run_id: str, host: str, texts: Path, *extra: str) -> int:
    argv = ["loadtest", "--host", host, "--texts", str(texts), "--out", str(tmp_path),
            "--run-id", run_id, *extra]  # fmt: skip
    return main(argv)


def _report(tmp_path: Path, run_id: str) -> dict[str, Any]:
    return json.loads((tmp_path / run_id / "report.json").read_text())


def test_shapes_end_and_follow_their_plan() -> None:
    step = default_params("step", users=8, spawn_rate=4, duration_s=8)
    assert [step_tick(t, **step) for t in (0, 1.9, 2, 4.5, 7.9)] == [
        (2, 4), (2, 4), (4, 4), (6, 4), (8, 4)
    ]  # fmt: skip
    assert step_tick(8, **step) is None
    spike = default_params("spike", users=10, spawn_rate=2, duration_s=10)
    assert [spike_tick(t, **spike) for t in (0, 3.9, 4, 5.9, 6)] == [
        (2, 2), (2, 2), (10, 10), (10, 10), (2, 2)
    ]  # fmt: skip
    assert spike_tick(10, **spike) is None


@pytest.mark.parametrize("shape", ["step", "spike"])
def test_shape_runs_end_by_themselves(
    shape: str, tmp_path: Path, fake_server: Any, traffic_tsv: Path
) -> None:
    server = fake_server(lambda: time.sleep(0.002))
    started = time.monotonic()
    code = _loadtest(tmp_path, shape, server.url, traffic_tsv, "--shape", shape, "--users", "6",
                     "--spawn-rate", "6", "--duration", "5s", "--warmup", "0s")  # fmt: skip
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 5 + 12, f"the {shape} shape did not stop the run ({elapsed:.0f} s)"
    history = (tmp_path / shape / "locust_stats_history.csv").read_text().splitlines()
    users = {int(line.split(",")[1]) for line in history[1:] if ",Aggregated," in line}
    expected = {"step": {2, 4, 6}, "spike": {1, 6}}[shape]
    assert expected <= users, f"user counts seen: {sorted(users)}"
    rows = _report(tmp_path, shape)["rows"]
    assert {r["name"] for r in rows} == {"all", "a", "b"}  # one row per X-Model-Variant


def test_open_loop_shows_a_stall_that_closed_loop_hides(
    tmp_path: Path, fake_server: Any, traffic_tsv: Path
) -> None:
    """A server that stops answering for 200 ms every 500 ms. Two closed-loop users each wait
    out one stall, then send hundreds of fast requests: the stall vanishes from the
    percentiles. An open-loop schedule keeps sending during the stall, and measures from the
    intended send time, so 40% of the time shows up as up to 200 ms of latency."""
    staller = Staller(pause_s=0.2, every_s=0.5)
    try:
        server = fake_server(staller)
        common = ("--duration", "5s", "--warmup", "1s")
        assert _loadtest(tmp_path, "closed", server.url, traffic_tsv, "--users", "2",
                         "--spawn-rate", "2", *common) == 0  # fmt: skip
        assert _loadtest(tmp_path, "open", server.url, traffic_tsv, "--open-loop", "--rate",
                         "100", "--arrivals", "fixed", *common) == 0  # fmt: skip
    finally:
        staller.stop.set()
    closed = _report(tmp_path, "closed")["rows"][0]
    opened = _report(tmp_path, "open")["rows"][0]
    assert closed["max_ms"] > 150, "the closed loop met the stall too ..."
    assert closed["p90_ms"] < 50, f"... but its p90 hides it: {closed}"
    assert opened["p90_ms"] > 100, f"open loop shows the stall: {opened}"
    assert opened["p50_ms"] > closed["p50_ms"]
    assert 450 <= opened["requests"] <= 550  # 100/s for 5 s, whatever the server did
    assert opened["dropped"] == 0
    # Locust's own statistics (CSV) measure from the intended time as well
    stats = (tmp_path / "open" / "locust_stats.csv").read_text().splitlines()
    header = stats[0].split(",")
    aggregated = next(line.split(",") for line in stats if ",Aggregated," in line)
    assert float(aggregated[header.index("90%")]) > 100


def test_open_loop_reports_drops_at_the_outstanding_limit(
    tmp_path: Path, fake_server: Any, traffic_tsv: Path
) -> None:
    gate = threading.Event()  # the server answers nothing for 2 s after the first request
    timers: list[threading.Timer] = []

    def hang() -> None:
        if not timers:
            timers.append(threading.Timer(2.0, gate.set))
            timers[0].start()
        gate.wait(10)

    server = fake_server(hang)
    code = _loadtest(tmp_path, "drops", server.url, traffic_tsv, "--open-loop", "--rate", "50",
                     "--arrivals", "fixed", "--max-outstanding", "10", "--duration", "3s",
                     "--warmup", "0s", "--slo", "fail=5%")  # fmt: skip
    assert code == 3
    overall = _report(tmp_path, "drops")["rows"][0]
    assert 70 <= overall["dropped"] <= 95, overall  # ~100 of 150 arrive while 10 hang
    assert overall["failures"] == overall["dropped"]
    assert overall["late"] == 0  # the generator kept its schedule; the server did not
    assert overall["max_ms"] > 1500  # the first ten waited out the 2 s


def test_find_max_brackets_a_known_capacity(
    tmp_path: Path, fake_server: Any, traffic_tsv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One request at a time, 10 ms each: 100 requests/s at most, with queueing before."""
    lock = threading.Lock()

    def serve_one() -> None:
        with lock:
            time.sleep(0.01)

    server = fake_server(serve_one)
    code = _loadtest(tmp_path, "max", server.url, traffic_tsv, "--find-max", "--slo",
                     "p99=100ms", "--rate", "25", "--duration", "2s", "--warmup", "0.5s",
                     "--find-max-precision", "0.3")  # fmt: skip
    assert code == 0
    report = _report(tmp_path, "max")
    rates = [t["offered_rps"] for t in report["trials"]]
    assert rates[:3] == [25, 50, 100], rates  # doubling until 100/s breaks the SLO
    assert 40 <= report["max_rate_rps"] < 100
    out = capsys.readouterr().out
    assert "highest offered rate meeting the SLO p99=100ms" in out
    # a server without tuneserve's memory gauges: the report says so instead of numbers
    assert report["server_memory"]["samples"] == 0
    assert "not Prometheus text" in report["server_memory"]["note"]
    assert "server memory: not measured (GET /metrics failed or was not Prometheus" in out
    for name in ("latency_vs_load.png", "latency_over_time.png", "report.md"):
        assert (tmp_path / "max" / name).stat().st_size > 1000


def test_a_config_file_and_a_csv_with_string_labels(tmp_path: Path, fake_server: Any) -> None:
    server = fake_server()
    texts = tmp_path / "topics.csv"
    texts.write_text("text,label\nStocks rise,Business\nNew GPU ships,Sci/Tech\n", encoding="utf-8")
    config = tmp_path / "load.toml"
    config.write_text(f'host = "{server.url}"\nusers = 2\nduration_s = 2\nwarmup_s = 0\n'
                      f'texts = "{texts}"\ntext_column = "text"\nout = "{tmp_path}"\n')  # fmt: skip
    assert main(["loadtest", "--config", str(config), "--set", "run_id='topics'"]) == 0
    report = _report(tmp_path, "topics")
    assert report["config"]["text_column"] == "text" and report["config"]["users"] == 2
    assert report["rows"][0]["requests"] > 0 and report["rows"][0]["failures"] == 0
    settings = json.loads((tmp_path / "topics" / "locust_settings.json").read_text())
    assert settings["config"]["texts"] == str(texts)
