"""The store behind a real `bentoml serve`: on PostgreSQL, and through a worker killed with SIGKILL.

BentoML's process manager (circus) replaces a dead worker, checking every 10 s, unless
BENTOML_CONTAINERIZED is set (any value: bentoml.serving.running_inside_container), as images
made by `bentoml containerize` have it; there /livez fails instead (service/workers.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.store import Store
from tests.conftest import make_sentences
from tests.service.conftest import Server, write_serving_config
from tests.service.test_server import _post_all

pytestmark = pytest.mark.slow

TEXTS = [t for t, _ in make_sentences(40, seed=3)]


def _config(tmp_path: Path, exports: dict[str, Path], **sections: Any) -> Path:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    return write_serving_config(tmp_path / "serving.toml", variants, "baseline", **sections)


def _report_counts(url: str) -> tuple[int, int]:
    variants = httpx.get(f"{url}/ab/report", timeout=10).json()["variants"]
    return sum(v["traffic"] for v in variants), sum(v["labelled"] for v in variants)


def test_a_server_keeps_its_experiment_in_postgresql(
    tmp_path: Path, tiny_exports: dict[str, Path], pg_url: Callable[[], str], start_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TUNESERVE_ID_KEY", secrets.token_hex(32))  # required with PostgreSQL
    url = pg_url()
    server = start_server(_config(tmp_path, tiny_exports, workers=2, store={"url": url}))
    bodies = [{"text": t, "user_id": f"user-{i}"} for i, t in enumerate(TEXTS)]
    answers = asyncio.run(_post_all(f"{server.url}/predict", bodies, concurrency=8))
    assert [r.status_code for r in answers] == [200] * len(TEXTS)
    feedback = [{"prediction_id": r.json()["prediction_id"], "label": "positive"} for r in answers]
    acks = asyncio.run(_post_all(f"{server.url}/feedback", feedback, concurrency=8))
    assert [r.json()["status"] for r in acks] == ["stored"] * len(TEXTS)
    deadline = time.monotonic() + 15
    while _report_counts(server.url) != (len(TEXTS), len(TEXTS)):  # the log writes within 0.2 s
        assert time.monotonic() < deadline, _report_counts(server.url)
        time.sleep(0.2)
    server.stop()
    store = Store(url)
    assert store.count("predictions") == store.count("feedback") == len(TEXTS)
    assert {v for v, *_ in store.labelled()} == {"baseline", "tuned"}
    assert store.get_state()[0] >= 1  # the experiment state lives there too
    assert not (tmp_path / "experiment.sqlite").exists(), "the SQLite file was used instead"


def workers(server: Server) -> dict[int, str]:
    """pid -> worker id of the server's live worker processes (children of the arbiter)."""
    found = {}
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
            worker = any(part.startswith("_bentoml_impl.worker") for part in cmdline)
            if child.status() == psutil.STATUS_ZOMBIE or not worker:
                continue
        except psutil.NoSuchProcess:
            continue
        found[child.pid] = cmdline[cmdline.index("--worker-id") + 1]
    return found


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str, server: Server) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} within {timeout_s} s: {server.log.read_text()[-3000:]}")
        time.sleep(0.1)
    return time.monotonic() - started


class Traffic:
    """Threads posting predict + feedback pairs until stopped, each on fresh connections."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.acked: list[str] = []  # prediction ids whose feedback got a 2xx answer
        self.codes: list[int | str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            text = TEXTS[(n * 7 + i) % len(TEXTS)]
            try:  # Connection: close spreads the requests over the workers
                with httpx.Client(timeout=10, headers={"Connection": "close"}) as client:
                    r = client.post(f"{self.url}/predict", json={"text": text})
                    code: int | str = r.status_code
                    if r.status_code == 200:
                        pid = r.json()["prediction_id"]
                        body = {"prediction_id": pid, "label": "positive"}
                        f = client.post(f"{self.url}/feedback", json=body)
                        code = f.status_code
                        if 200 <= f.status_code < 300:
                            with self._lock:
                                self.acked.append(pid)
            except httpx.HTTPError as exc:  # the killed worker's connections break
                code = type(exc).__name__
            with self._lock:
                self.codes.append(code)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _start_two_workers(
    tmp_path: Path, exports: dict[str, Path], start_server: Any
) -> tuple[Server, dict[int, str]]:
    server = start_server(_config(tmp_path, exports, workers=2))
    ready = "warm-up done in"
    _wait_for(lambda: server.log.read_text().count(ready) >= 2, 60, "two workers ready", server)
    _wait_for(lambda: len(workers(server)) == 2, 10, "two worker processes", server)
    return server, workers(server)


def _livez(server: Server, n: int = 10) -> list[int]:
    """/livez from n fresh connections (spread over the workers)."""
    with httpx.Client(timeout=10, headers={"Connection": "close"}) as client:
        return [client.get(f"{server.url}/livez").status_code for _ in range(n)]


def _answers_200(server: Server, n: int = 20) -> list[int]:
    with httpx.Client(timeout=10, headers={"Connection": "close"}) as client:
        return [client.post(f"{server.url}/predict", json={"text": "good"}).status_code
                for _ in range(n)]  # fmt: skip


def test_a_worker_killed_under_load_is_replaced_and_no_acknowledged_feedback_is_lost(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    server, before = _start_two_workers(tmp_path, tiny_exports, start_server)
    traffic = Traffic(server.url)
    try:
        time.sleep(1.5)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        killed_at = len(traffic.codes)
        respawn_s = _wait_for(
            lambda: len(workers(server)) == 2 and victim not in workers(server),
            30, "no new worker", server,
        )  # fmt: skip
        new = set(workers(server)) - set(before)
        ready = "warm-up done in"
        _wait_for(lambda: server.log.read_text().count(ready) >= 3, 60, "new worker ready", server)
        time.sleep(1.0)  # traffic reaches the new worker too
    finally:
        traffic.stop()
    assert len(new) == 1 and workers(server)[new.pop()] == before[victim]  # same worker slot
    assert _answers_200(server) == [200] * 20
    assert _livez(server) == [200] * 10
    after_kill = traffic.codes[killed_at:]
    assert after_kill.count(200) > 20, f"little traffic went through after the kill: {after_kill}"
    server.stop()
    stored = {row[0] for row in Store(tmp_path / "experiment.sqlite").conn.execute(
        "SELECT prediction_id FROM feedback").fetchall()}  # fmt: skip
    missing = [pid for pid in traffic.acked if pid not in stored]
    assert len(traffic.acked) > 50 and not missing, f"{len(missing)} acknowledged feedback lost"
    print(
        f"respawned in {respawn_s:.1f} s; {len(traffic.acked)} feedback acknowledged, all stored; "
        f"answers during the run: { {c: traffic.codes.count(c) for c in set(traffic.codes)} }"
    )


def test_with_bentoml_containerized_a_killed_worker_is_not_replaced(
    tmp_path: Path,
    tiny_exports: dict[str, Path],
    start_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENTOML_CONTAINERIZED", "true")  # what `bentoml containerize` images set
    server, before = _start_two_workers(tmp_path, tiny_exports, start_server)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: victim not in workers(server), 10, "the killed worker gone", server)
    time.sleep(15)  # BentoML respawns within its 10 s check interval where it respawns at all
    assert set(workers(server)) == set(before) - {victim}, "BentoML replaced the worker"
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200  # the survivor answers
    assert _answers_200(server, 5) == [200] * 5
    # the mitigation: liveness fails, so a liveness probe restarts the container
    assert _livez(server) == [503] * 10
    assert "1 of 2 workers alive and BentoML does not respawn them" in server.log.read_text()
