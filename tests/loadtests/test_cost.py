"""`tuneserve cost` on the reports of real load tests of a real `bentoml serve` of the tiny
models (a find-max run and a plain open-loop run), and the memory section those reports carry."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import psutil
import pytest

from tuneserve.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reports(
    tuneserve_server: Any, traffic_tsv: Path, tiny_exports: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:  # fmt: skip
    """A find-max run (10 then 20 req/s, the cap), a plain open-loop run, a bench-model run."""
    out = tmp_path_factory.mktemp("cost-runs")
    argv = ["loadtest", "--host", tuneserve_server.url, "--texts", str(traffic_tsv), "--out",
            str(out), "--duration", "2s", "--warmup", "0.5s"]  # fmt: skip
    find_max = [*argv, "--run-id", "max", "--find-max", "--rate", "10", "--max-rate", "20",
                "--slo", "p99=5s,fail=1%"]  # fmt: skip
    assert main(find_max) == 0
    assert main([*argv, "--run-id", "open", "--open-loop", "--rate", "10"]) == 0
    bench = out / "bench"
    assert main(["bench-model", "--from", str(tiny_exports["lora"]), "--timed", "10",
                 "--out", str(bench)]) == 0  # fmt: skip
    return {"max": out / "max" / "report.json", "open": out / "open" / "report.json",
            "bench": bench / "bench.json"}  # fmt: skip


def _worker_rss(server: Any) -> list[int]:
    children = psutil.Process(server.proc.pid).children(recursive=True)
    return [c.memory_info().rss for c in children
            if any("_bentoml_impl.worker" in part for part in c.cmdline())]  # fmt: skip


def test_the_report_carries_the_servers_own_memory(
    reports: dict[str, Path], tuneserve_server: Any
) -> None:
    report = json.loads(reports["max"].read_text())
    memory = report["server_memory"]
    assert memory["server"]["device"] == "cpu"
    assert set(memory["server"]["providers"].values()) == {"CPUExecutionProvider"}
    assert memory["samples"] >= 1 and memory["workers"] == 1
    worker = memory["rss_per_worker"]["1"]  # the one worker, by its BentoML index
    assert 0 < worker["mean_mib"] <= worker["peak_mib"] == memory["rss_worker_peak_mib"]
    # the worker's figure, not the load generator's: within a few MiB of its RSS now
    (now,) = _worker_rss(tuneserve_server)
    assert abs(worker["peak_mib"] - now / 2**20) < max(20, 0.15 * now / 2**20), (worker, now)
    assert "device_worker_peak_mib" not in memory  # CPU: no CUDA figures
    for trial in report["trials"]:  # each trial's window on its own
        assert trial["server_memory"]["samples"] >= 1, trial
    assert "server memory (" in (reports["max"].parent / "report.md").read_text()
    plain = json.loads(reports["open"].read_text())["server_memory"]
    assert plain["samples"] >= 1 and plain["rss_per_worker"].keys() == {"1"}


def test_the_cost_of_a_real_find_max_run(
    reports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = json.loads(reports["max"].read_text())
    max_rps = report["max_rate_rps"]
    assert max_rps == 20 and report["capped"]
    argv = ["cost", str(reports["max"]), "--price-per-hour", "0.5", "--target-rps", "100",
            "--out", str(tmp_path), "--run-id", "one"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "instances for 100 req/s" in out and "cheapest at 100 req/s: cpu" in out
    assert "--max-rate cap" in out
    result = json.loads((tmp_path / "one" / "cost.json").read_text())
    cpu = result["profiles"]["cpu"]
    assert result["headroom"] == 0.7 and cpu["slo"] == "p99=5s,fail=1%"
    assert cpu["instances"] == math.ceil(100 / (max_rps * 0.7)) == 8
    assert cpu["cost_per_hour"] == pytest.approx(8 * 0.5)
    assert cpu["cost_per_month"] == pytest.approx(8 * 0.5 * 730)
    assert cpu["cost_per_million_at_target"] == pytest.approx(4.0 / (100 * 3600) * 1e6)
    assert cpu["cost_per_million_at_full_utilisation"] == pytest.approx(0.5 / (20 * 3600) * 1e6)
    assert cpu["utilisation_at_target"] == pytest.approx(100 / (8 * 20))
    memory = report["server_memory"]
    assert cpu["memory"]["rss_worker_peak_mib"] == memory["rss_worker_peak_mib"]
    assert cpu["memory"]["rss_fleet_peak_mib"] == pytest.approx(8 * memory["rss_total"]["peak_mib"])
    assert (tmp_path / "one" / "cost.png").stat().st_size > 1000
    assert "instances for 100 req/s" in (tmp_path / "one" / "cost.md").read_text()


def test_profiles_side_by_side_with_their_bench_model_figures(
    reports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = reports["max"]
    argv = ["cost", "--profile", f"cpu={r}:0.5", "--profile", f"cpu-large={r}:1.25",
            "--bench", f"cpu={reports['bench']}", "--target-rps", "30", "--headroom", "1",
            "--currency", "EUR", "--out", str(tmp_path), "--run-id", "two"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["cpu", "cpu-large"]
    assert "cpu-large costs 2.50x as much" in out and "EUR" in out
    result = json.loads((tmp_path / "two" / "cost.json").read_text())
    assert [p["instances"] for p in result["profiles"].values()] == [2, 2]  # ceil(30 / 20)
    bench = json.loads(reports["bench"].read_text())
    figures = result["profiles"]["cpu"]["bench_model"]
    assert figures["model"] == "serving-cpu-int8"
    serving = bench["models"]["serving-cpu-int8"]
    assert figures["batch32_per_s"] == serving["batch32_sentences_per_s"]
    # bench-model's own process memory (every model loaded, PyTorch included)
    assert 0 < bench["process_memory"]["rss_mib"] <= bench["process_memory"]["peak_rss_mib"]
    assert "Memory of this benchmark process" in (reports["bench"].parent / "bench.md").read_text()
    assert "bench_model" not in result["profiles"]["cpu-large"]


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["cost", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def _rewritten(source: Path, path: Path, **changes: Any) -> Path:
    """The real report with the fields a different run would have written changed."""
    report = json.loads(source.read_text())
    memory = changes.pop("server", None)
    if memory is not None:
        report["server_memory"]["server"] |= memory
    path.write_text(json.dumps(report | changes))
    return path


def test_what_cost_refuses(
    reports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r, target = str(reports["max"]), ["--target-rps", "100", "--out", str(tmp_path)]
    err = _refused(capsys, str(reports["open"]), "--price-per-hour", "1", *target)
    assert "is not a find-max load test (open loop: 10 req/s" in err and "--find-max" in err
    none_met = _rewritten(reports["max"], tmp_path / "none.json", max_rate_rps=None)
    err = _refused(capsys, str(none_met), "--price-per-hour", "1", *target)
    assert "no offered rate met the SLO p99=5s,fail=1% (tried 10, 20 req/s)" in err
    assert "--price-per-hour: the price per instance-hour must be above 0, got 0" in _refused(
        capsys, r, "--price-per-hour", "0", *target
    )
    assert "must be above 0, got -2" in _refused(capsys, "--profile", f"cpu={r}:-2", *target)
    assert "is not a number" in _refused(capsys, "--profile", f"cpu={r}:cheap", *target)
    assert "is not NAME=REPORT:PRICE" in _refused(capsys, "--profile", r, *target)
    assert "needs --price-per-hour" in _refused(capsys, r, *target)
    err = _refused(capsys, "--profile", f"gpu={r}:2.1", *target)
    assert "is a GPU profile, but its server ran on CPUExecutionProvider, not CUDA" in err
    cuda = _rewritten(
        reports["max"],
        tmp_path / "cuda.json",
        server={"device": "cuda", "providers": {"tuned": "CUDAExecutionProvider"}},
    )
    err = _refused(capsys, str(cuda), "--price-per-hour", "2.1", *target)
    assert "profile gpu" in err and "is a GPU profile without CUDA figures" in err
    err = _refused(capsys, "--profile", f"a={r}:1", "--profile", f"a={r}:2", *target)
    assert "profile names repeat" in err
    err = _refused(capsys, r, "--price-per-hour", "1", "--headroom", "1.5", *target)
    assert "--headroom is the utilisation planned per instance" in err
    err = _refused(capsys, r, "--price-per-hour", "1", "--target-rps", "0", "--out", str(tmp_path))
    assert "--target-rps must be above 0, got 0" in err
    assert "does not exist" in _refused(capsys, str(tmp_path / "nope.json"), "--price-per-hour",
                                        "1", *target)  # fmt: skip
    bench = f"gpu={reports['bench']}"
    err = _refused(capsys, r, "--price-per-hour", "1", "--bench", bench, *target)
    assert "is not PROFILE=BENCH_JSON for a given profile (profiles: cpu)" in err
    assert not list(tmp_path.glob("2*"))  # nothing written for a refused estimate
