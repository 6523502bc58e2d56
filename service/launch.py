"""`tuneserve serve`: check the serving config, start `bentoml serve`, optionally try it out.

With ``--try N`` it waits until the service is ready, sends N labelled texts (4 at a time) to
POST /predict, prints per variant what came back (accuracy against the labels, client-side
latency), and stops the server: the serving step of `make demo`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from service.catalog import serving_variants
from service.config import CONFIG_ENV, load_serving_config
from service.model import read_export
from tuneserve.errors import RunError
from tuneserve.lineage import DataColumns, read_labelled, resolve_columns
from tuneserve.percentiles import percentiles


def serve(
    config: Path,
    host: str = "127.0.0.1",
    port: int = 3000,
    try_n: int = 0,
    texts: Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
) -> int:
    """Run the service until it stops (or, with ``try_n``, until the try-out is done).

    The try-out's columns are those the control was trained on (its manifest chain) unless
    named; the split is read and checked before the server starts.
    """
    settings = load_serving_config(config)
    for variant in serving_variants(settings):  # as the runtime catalog changed them
        read_export(variant.path)  # a clear error now rather than a traceback from a worker
    split = None
    if try_n:
        if texts is None:
            raise RunError("--try needs --texts: a labelled split (TSV/CSV/JSONL/Parquet)")
        columns = resolve_columns(settings.control.path, text_column, label_column)
        split = read_labelled("try", texts, columns)
    env = {**os.environ, CONFIG_ENV: str(config.resolve()), "BENTOML_DO_NOT_TRACK": "true"}
    command = [sys.executable, "-m", "bentoml", "serve", "service.app:Tuneserve"]
    command += ["--host", host, "--port", str(port)]
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        if split is None:
            return proc.wait()
        url = f"http://{host}:{port}"
        wait_ready(url, proc)
        try_out(url, split.texts[:try_n], split.labels[:try_n], split.origin, columns)
        return 0
    finally:
        stop_process(proc)


@contextlib.contextmanager
def served(config: Path, host: str) -> Iterator[None]:
    """`tuneserve serve --config CONFIG` on ``host``'s address, in its own process (as it would
    run in production), ready inside the block and stopped after it."""
    url = urlsplit(host)
    server = subprocess.Popen(
        [sys.executable, "-m", "tuneserve.cli", "serve", "--config", str(config),
         "--host", url.hostname or "127.0.0.1", "--port", str(url.port or 80)],
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(host, server)
        yield
    finally:
        stop_process(server)


def control_export(config: Path) -> Path:
    """The export run of the serving config's control variant."""
    return Path(load_serving_config(config).control.path)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM the process group of ``proc`` (server and workers), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout_s)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    """Poll /readyz until 200; fail if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunError(f"bentoml serve exited with code {proc.returncode} before ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RunError(f"the service at {url} was not ready after {timeout_s:.0f} s")


RETRIES = 5  # attempts after a 429 or 503 that carries Retry-After (a worker still warming up)


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    """POST JSON; (status, body, seconds of the last attempt). A 429 or 503 with Retry-After is
    retried after the time it names, as a well-behaved client does: /readyz answers for one
    worker, so the first requests can reach another that is still warming up."""
    data = json.dumps(body).encode()
    for attempt in range(RETRIES + 1):
        request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read()), time.perf_counter() - started
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, json.loads(exc.read() or b"{}")
            retry_after = exc.headers.get("Retry-After")
        if status not in (429, 503) or retry_after is None or attempt == RETRIES:
            break
        time.sleep(min(float(retry_after), 5.0))
    return status, payload, time.perf_counter() - started


def model_label(truth: Any, labels: list[str], columns: DataColumns | None) -> str:
    """A variant's name for a raw dataset label: the train config's label names, else label i is
    the variant's i-th label, else the raw label itself (string labels)."""
    if columns is not None and str(truth) in columns.label_names:
        return columns.label_names[str(truth)]
    if str(truth).isdigit() and int(truth) < len(labels):
        return labels[int(truth)]
    return str(truth)


def try_out(
    url: str, texts: list[Any], labels: list[Any], origin: str, columns: DataColumns | None = None
) -> None:
    """Send labelled texts and print a per-variant table."""
    with urllib.request.urlopen(f"{url}/models", timeout=10) as response:
        models = json.loads(response.read())
    names = {v["name"]: v["labels"] for v in models["variants"]}
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(
                lambda i: _post(f"{url}/predict", {"text": texts[i], "user_id": f"user-{i}"}),
                range(len(texts)),
            )
        )
    rows: dict[str, dict[str, list[float]]] = {}
    failures: Counter[str] = Counter()
    for (status, body, seconds), truth in zip(results, labels, strict=True):
        if status != 200:
            failures[f"{status} {body.get('kind', '?')}: {body.get('error', '')}"] += 1
            continue
        expected = model_label(truth, names[body["variant"]], columns)
        row = rows.setdefault(body["variant"], {"correct": [], "latency": []})
        row["correct"].append(float(body["label"] == expected))
        row["latency"].append(seconds * 1000)
    failed = sum(failures.values())
    why = f" ({', '.join(f'{n} x {kind}' for kind, n in failures.most_common())})" if failed else ""
    print(f"\ntuneserve at {url}: {len(texts)} texts from {origin}, {failed} failed{why}")
    print(
        f"{'variant':<12}{'version':<34}{'requests':>9}{'accuracy':>10}{'p50 ms':>8}{'p99 ms':>8}"
    )
    for name, row in sorted(rows.items()):
        version = next(v["model_version"] for v in models["variants"] if v["name"] == name)
        lat = percentiles(row["latency"], (50, 99))
        print(
            f"{name:<12}{version:<34}{len(row['latency']):>9}{np.mean(row['correct']):>10.3f}"
            f"{lat[50]:>8.1f}{lat[99]:>8.1f}"
        )
    print("(latency measured by this client, 4 requests at a time, on the same machine)")
    post_feedback_and_report(url, results, labels, names, columns)


def post_feedback_and_report(
    url: str,
    results: list[tuple[int, dict[str, Any], float]],
    labels: list[Any],
    names: dict[str, list[str]],
    columns: DataColumns | None = None,
) -> None:
    """Post each true label as feedback, then print the service's A/B report."""
    jobs = []
    for (status, body, _), truth in zip(results, labels, strict=True):
        if status == 200:
            label = model_label(truth, names[body["variant"]], columns)
            jobs.append({"prediction_id": body["prediction_id"], "label": label})
    with ThreadPoolExecutor(4) as pool:
        acks = list(pool.map(lambda job: _post(f"{url}/feedback", job)[0], jobs))
    stored = sum(1 for status in acks if status == 200)
    deadline = time.monotonic() + 10
    while True:  # the prediction log is written off the request path: wait until it caught up
        with urllib.request.urlopen(f"{url}/ab/report", timeout=30) as response:
            report = json.loads(response.read())
        if sum(v["labelled"] for v in report["variants"]) >= stored or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    with urllib.request.urlopen(f"{url}/ab/report?format=text", timeout=30) as response:
        text = response.read().decode()
    print(f"\nfeedback: {stored} of {len(jobs)} true labels stored\n{text}")
