"""Run Locust headless in a subprocess (alone, as a master with workers, or as a worker) and
turn its merged histograms into a report and an SLO verdict.

Locust monkey-patches the interpreter with gevent when imported, so it never runs in this
process: the runner writes the run's settings (the resolved config, validated by the same model in
the locustfile) as one JSON file and passes its path in one environment variable; the locustfile
(the master, or the one process) writes the merged histograms and counts (``histograms.json``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loadtests.config import SETTINGS_ENV, ClusterConfig, LoadTestConfig, LocustSettings
from loadtests.errors import LoadTestError
from loadtests.stats import read_results, summary_rows, windows
from tuneserve.lineage import default_test_split, read_labelled, resolve_columns

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"
PROGRESS_EVERY_S = 5.0
RESULTS = "histograms.json"
WORKERS_WAIT_S = 120  # a master waits this long for its --expect-workers
LOCAL = ClusterConfig()


def check_host(host: str, timeout_s: float = 5.0) -> None:
    """Fail in one line when nothing answers HTTP at ``host`` (any HTTP status will do)."""
    try:
        with urllib.request.urlopen(f"{host}/livez", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # something answered HTTP
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LoadTestError(
            f"cannot reach {host} ({reason}): start the service (make serve) or pass --host"
        ) from exc


def resolve_traffic(cfg: LoadTestConfig) -> tuple[LoadTestConfig, list[list[Any]]]:
    """The config with its split, columns and label names filled in (from ``cfg.model``'s train
    run where not given), and the split's [text, label] pairs: read and checked before anything
    starts."""
    texts = cfg.texts or default_test_split()
    columns = resolve_columns(cfg.model, cfg.text_column, cfg.label_column)
    split = read_labelled("load-test", texts, columns)
    pairs = [[str(t), lab] for t, lab in zip(split.texts, split.labels, strict=True) if t]
    if not pairs:
        raise LoadTestError(f"{texts} has no texts to send")
    resolved = cfg.model_copy(update={
        "texts": texts, "text_column": columns.text, "label_column": columns.label,
        "label_names": cfg.label_names or columns.label_names,
    })  # fmt: skip
    return resolved, pairs


def read_traffic(cfg: LoadTestConfig) -> list[list[Any]]:
    """The split's [text, label] pairs, read (and checked) before anything starts."""
    return resolve_traffic(cfg)[1]


def write_settings(cfg: LoadTestConfig, run_dir: Path, rate: float) -> Path:
    """The locustfile's settings as one JSON file in ``run_dir`` (its traffic file beside it)."""
    run_dir = run_dir.resolve()  # Locust runs in the repository root, maybe not here
    settings = LocustSettings(
        config=cfg.model_copy(update={"rate": rate}),
        traffic=run_dir / "traffic.json",
        results=run_dir / RESULTS,
        raw=run_dir / "requests.jsonl" if cfg.raw_requests else None,
    )
    path = run_dir / "locust_settings.json"
    path.write_text(settings.model_dump_json(indent=2) + "\n")
    return path


def locust_env(settings: Path) -> dict[str, str]:
    """This environment, with the settings file and this checkout on the import path."""
    return {
        **os.environ,
        SETTINGS_ENV: str(settings),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def worker_processes(cfg: LoadTestConfig, cluster: ClusterConfig) -> int:
    """How many processes run users: 1 alone, N with --processes N, the workers of a master."""
    return cluster.expect_workers if cluster.role == "master" else cfg.processes


def locust_command(cfg: LoadTestConfig, run_dir: Path, cluster: ClusterConfig = LOCAL) -> list[str]:
    """`locust --headless` writing CSV (full history), HTML and JSON into ``run_dir``; with
    ``--processes N`` Locust forks a master and N workers; a worker only follows its master."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--stop-timeout", "5",
               "--loglevel", "WARNING"]  # fmt: skip
    if cfg.processes > 1:
        command += ["--processes", str(cfg.processes)]
    if cluster.role == "worker":
        return [*command, "--worker", "--master-host", cluster.master_host,
                "--master-port", str(cluster.master_port)]  # fmt: skip
    if cluster.role == "master":
        command += ["--master", "--expect-workers", str(cluster.expect_workers),
                    "--expect-workers-max-wait", str(WORKERS_WAIT_S),
                    "--master-bind-host", cluster.master_bind_host,
                    "--master-bind-port", str(cluster.master_port)]  # fmt: skip
    total = cfg.warmup_s + cfg.duration_s
    prefix = str(run_dir / "locust")
    command += ["--headless", "--host", cfg.host, "--csv", prefix, "--csv-full-history",
                "--html", prefix + ".html", "--json-file", prefix, "--only-summary"]  # fmt: skip
    if cfg.open_loop:
        # one scheduler per process, each its share; the master quits when all are done, and
        # the run time is only a backstop
        users = str(worker_processes(cfg, cluster))
        return [*command, "-u", users, "-r", users, "-t", f"{total + 30:.0f}s", "OpenLoopUser"]
    if cfg.shape == "constant":  # with workers, the run time outlasts the measured interval
        run_s = total + (2 if cfg.processes > 1 or cluster.role == "master" else 0)
        command += ["-u", str(cfg.users), "-r", f"{cfg.spawn_rate:g}", "-t", f"{run_s:.0f}s"]
    return [*command, "PredictUser"]


def _progress(history: Path, elapsed_s: float, total_s: float) -> None:
    try:
        with history.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("Name") == "Aggregated"]
    except OSError:
        rows = []
    if rows:
        last = rows[-1]
        log.info(
            "%3.0f/%.0f s: %s users, %s req/s, %s requests, %s failures, p99 %s ms "
            "(Locust's rounded figures)", elapsed_s, total_s, last["User Count"],
            f"{float(last['Requests/s']):.1f}", last["Total Request Count"],
            last["Total Failure Count"], last.get("99%", "?"),
        )  # fmt: skip
    else:
        log.info("%3.0f/%.0f s: no requests answered yet", elapsed_s, total_s)


def run_locust(
    cfg: LoadTestConfig, run_dir: Path, traffic: list[list[Any]], rate: float | None = None,
    cluster: ClusterConfig = LOCAL,
) -> dict[str, Any]:  # fmt: skip
    """One headless Locust run in ``run_dir``: its metadata, summary rows and windows (a worker:
    only its exit code)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "traffic.json").write_text(json.dumps(traffic))
    command = locust_command(cfg, run_dir, cluster)
    env = locust_env(write_settings(cfg, run_dir, cfg.rate if rate is None else rate))
    total = cfg.warmup_s + cfg.duration_s
    deadline = total + 90 + (WORKERS_WAIT_S if cluster.role == "master" else 0)
    if cluster.role == "worker":
        deadline = float("inf")  # a worker runs as long as its master
    started = time.monotonic()
    with (run_dir / "locust.log").open("wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            next_report = started + PROGRESS_EVERY_S
            while proc.poll() is None:
                time.sleep(0.2)
                if cluster.role != "worker" and time.monotonic() >= next_report:
                    _progress(run_dir / "locust_stats_history.csv", time.monotonic() - started,
                              total)  # fmt: skip
                    next_report += PROGRESS_EVERY_S
                if time.monotonic() - started > deadline:
                    proc.kill()
                    raise LoadTestError(f"Locust ran {deadline - total:.0f} s past its "
                                        f"{total:.0f} s: see {run_dir / 'locust.log'}")  # fmt: skip
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if cluster.role == "worker":
        return {"locust_exit_code": proc.returncode}
    path = run_dir / RESULTS
    if not path.is_file():
        tail = (run_dir / "locust.log").read_text(errors="replace")[-1500:]
        raise LoadTestError(f"Locust exited with code {proc.returncode} and no results: {tail}")
    results = read_results(path)
    meta = results["meta"]
    rows = summary_rows(results, cfg.duration_s)
    if meta.get("started_at") is None or not rows[0]["requests"]:
        raise LoadTestError(f"Locust sent no requests to {cfg.host}: see {run_dir / 'locust.log'}")
    if meta["workers_finished"] < meta["workers"]:
        log.warning("%d of %d workers sent no last report: see %s",
                    meta["workers"] - meta["workers_finished"], meta["workers"],
                    run_dir / "locust.log")  # fmt: skip
    start = float(meta["started_at"]) + cfg.warmup_s
    points = windows(results, total)
    (run_dir / "windows.json").write_text(json.dumps(points))
    return {
        "meta": meta,
        "window": {"start": start, "end": start + cfg.duration_s},
        "rows": rows,
        "windows": points,
        "locust_exit_code": proc.returncode,
    }
