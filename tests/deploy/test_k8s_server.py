"""The Deployment's container, as far as it runs without a cluster: its args and environment
start a real `bentoml serve` in a directory laid out like the image, the probes' paths answer,
and SIGTERM to the main process alone (what the kubelet sends to PID 1) drains the server and
flushes the prediction log well within the grace period."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.config import CONFIG_ENV, load_serving_config
from tests.conftest import REPO, make_sentences
from tests.service.conftest import free_port

pytestmark = pytest.mark.slow

K8S = REPO / "deploy" / "k8s"


def _container() -> dict[str, Any]:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    return {
        "pod": deployment["spec"]["template"]["spec"],
        **deployment["spec"]["template"]["spec"]["containers"][0],
    }


def _args(container: dict[str, Any], port: int) -> list[str]:
    """The container's args with the address replaced (no other change)."""
    args = list(container["args"])
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    assert args[0] == "bentoml"
    return [str(Path(sys.executable).parent / "bentoml"), *args[1:]]


def _env(container: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The container's environment: plain values as written, the two mounted paths moved under
    tmp_path, the Secrets filled in as the README makes them. The store stays the config's
    SQLite file (the Secret would name PostgreSQL; tests/service covers that store)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNESERVE_", "PROMETHEUS_"))}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
    env[CONFIG_ENV] = str(tmp_path / "etc" / Path(env[CONFIG_ENV]).name)
    env["BENTOML_HOME"] = str(tmp_path / "bentoml-home")  # the emptyDir
    env["TUNESERVE_ID_KEY"] = secrets.token_hex(32)
    env["TUNESERVE_ADMIN_TOKEN"] = secrets.token_hex(32)
    return env


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise AssertionError(f"bentoml serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not 200 within {timeout_s} s: {log.read_text()[-3000:]}")


def test_deployment_container_serves_its_probes_and_drains_on_sigterm(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    container = _container()
    workdir = tmp_path / "srv"  # the image's WORKDIR: the config's relative paths start here
    settings = load_serving_config(K8S / "serving.toml")
    for variant in settings.variants:
        shutil.copytree(tiny_exports["head" if variant.control else "lora"], workdir / variant.path)
    env = _env(container, tmp_path)
    Path(env[CONFIG_ENV]).parent.mkdir()
    shutil.copy(K8S / "serving.toml", env[CONFIG_ENV])  # the ConfigMap
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        _args(container, port), cwd=workdir, env=env, stdout=log.open("wb"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        probes = {p: container[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        budget = (
            probes["startupProbe"]["periodSeconds"] * probes["startupProbe"]["failureThreshold"]
        )
        for probe in probes.values():
            _wait(url + probe["httpGet"]["path"], proc, log, budget)
        metrics = httpx.get(f"{url}/metrics", timeout=5)  # the ServiceMonitor's path
        assert metrics.status_code == 200 and "tuneserve_ready 1.0" in metrics.text
        assert httpx.get(f"{url}/no-such-path", timeout=5).status_code == 404  # no catch-all

        answered: list[str] = []
        stop = threading.Event()

        def client(worker: int) -> None:
            texts = [t for t, _ in make_sentences(200, seed=worker)]
            with httpx.Client(timeout=10) as http:
                for i, text in enumerate(texts):
                    if stop.is_set():
                        return
                    try:
                        r = http.post(f"{url}/predict", json={"text": text, "user_id": f"u{i}"})
                    except httpx.HTTPError:
                        return  # the server stopped listening: never answered, never logged
                    if r.status_code == 200:
                        answered.append(r.json()["prediction_id"])

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        while len(answered) < 40 and all(t.is_alive() for t in threads):
            time.sleep(0.02)
        sigterm_at = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)  # the main process only, as the kubelet does
        pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
        proc.wait(container["pod"]["terminationGracePeriodSeconds"] - pre_stop)
        drained_s = time.monotonic() - sigterm_at
        stop.set()
        for thread in threads:
            thread.join(15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert len(answered) >= 40
    with sqlite3.connect(workdir / settings.store.path) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM predictions")}
    missing = set(answered) - stored
    assert not missing, f"{len(missing)} answered predictions not flushed to the store"
    assert drained_s < 20, f"the drain took {drained_s:.1f} s"
