"""`tuneserve loadtest`: one run (or a find-max search), its reports, and the SLO verdict."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from loadtests.config import ClusterConfig, LoadTestConfig
from loadtests.errors import LoadTestError
from loadtests.findmax import find_max_rate
from loadtests.memory import ServerMemory, memory_line, summarise
from loadtests.plots import plot_over_time, plot_vs_load
from loadtests.report import base_report, format_table, write_report
from loadtests.runner import LOCAL, check_host, resolve_traffic, run_locust, worker_processes
from loadtests.slo import Bound, check_slo, parse_slo

log = logging.getLogger(__name__)
SLO_BROKEN_EXIT = 3  # 1 is for errors (bad input, unreachable host), 2 for usage


def make_run_dir(cfg: LoadTestConfig) -> Path:
    """``OUT/RUN_ID``, new: a run never writes over another."""
    run_dir = cfg.out / (cfg.run_id or time.strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists():
        raise LoadTestError(f"{run_dir} already exists: pass another --run-id")
    run_dir.mkdir(parents=True)
    return run_dir


def _generators(cfg: LoadTestConfig, cluster: ClusterConfig) -> str:
    if cluster.role == "master":
        return f"; a Locust master and {cluster.expect_workers} workers (histograms merged)"
    if cfg.processes > 1:
        return (f"; a Locust master and {cfg.processes} worker processes on this machine "
                "(histograms merged)")  # fmt: skip
    return ""


def _mode(cfg: LoadTestConfig, find_max: bool, cluster: ClusterConfig = LOCAL) -> str:
    generators = _generators(cfg, cluster)
    if find_max:
        return f"find-max: open loop, {cfg.arrivals} arrivals, rising rates{generators}"
    if cfg.open_loop:
        share = (f" ({cfg.rate / worker_processes(cfg, cluster):g} per worker)"
                 if generators else "")  # fmt: skip
        return (f"open loop: {cfg.rate:g} req/s{share}, {cfg.arrivals} arrivals, latency from "
                f"the intended send time, at most {cfg.max_outstanding} in flight per process"
                f"{generators}")  # fmt: skip
    pace = f"{cfg.rate:g} req/s per user" if cfg.rate else "no wait between requests"
    return f"closed loop: {cfg.users} users ({cfg.shape} shape), {pace}{generators}"


def run_loadtest(
    cfg: LoadTestConfig, slo: str | None, command: list[str], find_max: bool = False,
    max_rate: float = 1000.0, precision: float = 0.1,
    server: Callable[[], AbstractContextManager[Any]] | None = None,
    cluster: ClusterConfig = LOCAL,
) -> int:  # fmt: skip
    """Check every input, start ``server`` (if any), run, report, print the summary; 0, or
    SLO_BROKEN_EXIT when a bound is broken. A worker (``cluster.role``) only runs its users
    for its master, which reports."""
    if cluster.role != "local" and find_max:
        raise LoadTestError("--find-max runs one Locust run per trial: use --processes N on one "
                            "machine, not --master/--worker")  # fmt: skip
    if cluster.role == "master" and cfg.processes > 1:
        raise LoadTestError("--master runs no users: start the workers with --worker (and "
                            "--processes N there), not --processes on the master")  # fmt: skip
    if cluster.role == "worker":
        cfg, traffic = resolve_traffic(cfg)
        return _follow(cfg, traffic, cluster)
    bounds = parse_slo(slo) if slo else []
    if find_max and not bounds:
        raise LoadTestError("--find-max needs --slo: the bound the highest rate must meet")
    if find_max and not 0 < precision < 1:
        raise LoadTestError(f"--find-max-precision must be between 0 and 1, got {precision}")
    cfg, traffic = resolve_traffic(cfg)
    with server() if server else contextlib.nullcontext():
        return _measure(cfg, bounds, slo, traffic, command, find_max, max_rate, precision,
                        cluster)  # fmt: skip


def _follow(cfg: LoadTestConfig, traffic: list[list[Any]], cluster: ClusterConfig) -> int:
    """A worker: its users for the master at ``cluster.master_host``, until the master quits."""
    run_dir = make_run_dir(cfg)
    log.info("worker of the master at %s:%d -> %s (the master's config decides the load)",
             cluster.master_host, cluster.master_port, run_dir)  # fmt: skip
    code = int(run_locust(cfg, run_dir, traffic, cluster=cluster)["locust_exit_code"])
    print(f"worker done (Locust exit code {code}); the master reports\n-> {run_dir}")
    return 0 if code == 0 else 1


def _measure(
    cfg: LoadTestConfig, bounds: list[Bound], slo: str | None, traffic: list[list[Any]],
    command: list[str], find_max: bool, max_rate: float, precision: float,
    cluster: ClusterConfig,
) -> int:  # fmt: skip
    check_host(cfg.host)
    run_dir = make_run_dir(cfg)
    report: dict[str, Any] = base_report(cfg.host, command)
    report |= {"mode": _mode(cfg, find_max, cluster), "config": cfg.model_dump(mode="json"),
               "slo": slo, "cluster": cluster.model_dump(mode="json")}  # fmt: skip
    log.info("%s -> %s; %s", report["mode"], run_dir, report["load_generator"])
    title = f"{cfg.host}: {report['mode']}\n{report['load_generator'].split(':')[0]}"
    # the server's own figures, from its /metrics
    with ServerMemory(cfg.host, headers=cfg.key_headers()) as memory:
        if find_max:
            rows = _search(cfg, bounds, run_dir, traffic, max_rate, precision, title, report)
        else:
            rows = _single(cfg, bounds, run_dir, traffic, cluster, title, report)
    _add_memory(report, memory)
    table = format_table(rows, open_loop=cfg.open_loop or find_max)
    write_report(run_dir, report, table)
    print(f"{report['load_generator']}\n{report['mode']}")
    print(table)
    print(memory_line(report["server_memory"]))
    if find_max:
        if report["max_rate_rps"]:
            capped = " (the --max-rate cap)" if report["capped"] else ""
            print(f"highest offered rate meeting the SLO {slo}: {report['max_rate_rps']:.1f} "
                  f"req/s{capped}; table above: that trial")  # fmt: skip
        else:
            print(f"no offered rate met the SLO {slo}")
    if report["breaches"]:
        print("SLO broken: " + "; ".join(report["breaches"]))
    elif bounds:
        print(f"SLO met: {slo}")
    print(f"-> {run_dir}")
    return SLO_BROKEN_EXIT if report["breaches"] else 0


def _search(
    cfg: LoadTestConfig, bounds: list[Bound], run_dir: Path, traffic: list[list[Any]],
    max_rate: float, precision: float, title: str, report: dict[str, Any],
) -> list[dict[str, Any]]:  # fmt: skip
    """The find-max search into ``report`` and its plots; the rows of the best trial (else the
    last)."""
    search = find_max_rate(cfg, bounds, run_dir, traffic, max_rate, precision=precision)
    report |= search
    best = next((t for t in search["trials"] if t["offered_rps"] == search["max_rate_rps"]),
                None)  # fmt: skip
    report["breaches"] = [] if best else ["no offered rate met the SLO"]
    slo_p99 = next((b.limit for b in bounds if b.key == "p99"), None)
    plot_vs_load(search["trials"], title, run_dir / "latency_vs_load.png", slo_p99,
                 "offered rate (requests/s, open loop)")  # fmt: skip
    trial_dir = run_dir / (best or search["trials"][-1])["folder"]
    plot_over_time(json.loads((trial_dir / "windows.json").read_text()), cfg.warmup_s,
                   title, run_dir / "latency_over_time.png")  # fmt: skip
    return list((best or search["trials"][-1])["rows"])


def _add_memory(report: dict[str, Any], memory: ServerMemory) -> None:
    """The server's memory in the measured window: of the run, or of each find-max trial, and
    of the best trial (the operating point the cost estimate uses)."""
    if "trials" not in report:
        report["server_memory"] = memory.summary(**report["window"])
        return
    for trial in report["trials"]:
        trial["server_memory"] = summarise(memory.samples, **trial["window"])
    best = next((t for t in report["trials"] if t["offered_rps"] == report["max_rate_rps"]),
                None)  # fmt: skip
    report["server_memory"] = memory.summary(**best["window"]) if best else memory.summary()


def _single(
    cfg: LoadTestConfig, bounds: list[Bound], run_dir: Path, traffic: list[list[Any]],
    cluster: ClusterConfig, title: str, report: dict[str, Any],
) -> list[dict[str, Any]]:  # fmt: skip
    """One run into ``report`` and its plots; its summary rows."""
    result = run_locust(cfg, run_dir, traffic, cluster=cluster)
    rows: list[dict[str, Any]] = result["rows"]
    report |= {"rows": rows, "window": result["window"], "meta": result["meta"]}
    report["breaches"] = check_slo(bounds, rows)
    points = [p | {"offered_rps": p["sent_per_s"]} for p in result["windows"]
              if p["t_s"] >= cfg.warmup_s]  # fmt: skip
    slo_p99 = next((b.limit for b in bounds if b.key == "p99"), None)
    plot_over_time(result["windows"], cfg.warmup_s, title, run_dir / "latency_over_time.png")
    plot_vs_load(points, title, run_dir / "latency_vs_load.png", slo_p99,
                 "requests sent per second (1-second windows after the warm-up)")  # fmt: skip
    return rows
