"""Two `tuneserve serve` replicas on one PostgreSQL store: one experiment across them, killed store
backends and a store outage under load on both, and a replica through PgBouncer (transaction mode).

The database is shared with other tests, so a test kills only the connections it named
(``application_name``), and a store outage is a proxy in front of the server that is cut
(tests/service/proxy.py), never a stopped cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import REPO, make_sentences
from tests.service.conftest import Server, _pg_unavailable, free_port, write_serving_config
from tests.service.proxy import TcpProxy
from tests.service.test_pool import named, terminate

pytestmark = pytest.mark.slow

KEY = "replica-test-id-key-0123456789abcdef"  # TUNESERVE_ID_KEY, shared by the replicas
TOKEN = "replica-test-admin-token"
TEXTS = [t for t, _ in make_sentences(40, seed=5)]
CONVERGE_S = 3.0  # README: a change on one replica is followed by the others within seconds
PGBOUNCER_URL_ENV = "TUNESERVE_TEST_PGBOUNCER_URL"
OK_WHILE_AWAY = {200, 429, 503}  # what a client may hear while the store is away, nothing else


class Replica(Server):
    """`tuneserve serve --config C --host 127.0.0.1 --port P`, as a replica runs it, with the
    store's URL, the prediction-id key and the admin token in its environment."""

    def __init__(self, config: Path, home: Path, log: Path, store_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
               "PYTHONUNBUFFERED": "1", "TUNESERVE_STORE_URL": store_url,
               "TUNESERVE_ID_KEY": KEY, "TUNESERVE_ADMIN_TOKEN": TOKEN}  # fmt: skip
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.pop("TUNESERVE_SERVING_CONFIG", None)
        tuneserve = Path(sys.executable).with_name("tuneserve")
        self.proc = subprocess.Popen(
            [str(tuneserve), "serve", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def readyz(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"{self.url}/readyz", timeout=5)
        return r.status_code, r.json()

    def metric(self, name: str) -> list[float]:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(name) and not line.startswith("#")]  # fmt: skip


@pytest.fixture
def replicas(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> Iterator[Callable[..., tuple[Replica, Replica]]]:
    """``replicas(store_url, workers=1)``: two replicas of one serving config on one store."""
    started: list[Replica] = []

    def start(store_url: str, workers: int = 1) -> tuple[Replica, Replica]:
        variants = {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora-cpu-fp32"]}
        config = write_serving_config(
            tmp_path / "serving.toml", variants, "baseline", workers=workers,
            store={"pool_max_size": 3, "pool_wait_s": 2.0, "retry_after_s": 1},
        )  # fmt: skip
        for n in range(2):
            home, log = tmp_path / f"home-{n}", tmp_path / f"replica-{n}.log"
            started.append(Replica(config, home, log, store_url))
        for replica in started:
            replica.wait_ready()
        return started[0], started[1]

    yield start
    for replica in started:
        replica.stop()


class Traffic:
    """Threads posting predict + feedback pairs to both replicas until stopped."""

    def __init__(self, urls: list[str], threads: int = 4) -> None:
        self.urls = urls
        self.predicted: list[str] = []  # every prediction id answered with 200
        self.acked: list[str] = []  # every prediction id whose feedback got a 2xx
        self.codes: list[int | str] = []  # every answer (predict and feedback), or the error
        self.retry_after: list[str | None] = []  # Retry-After of every 503 feedback answer
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, n: int) -> None:
        i = 0
        with httpx.Client(timeout=15) as client:
            while not self._stop.is_set():
                i += 1
                predict_at, feedback_at = self.urls[i % 2], self.urls[(i + n) % 2]
                try:
                    r = client.post(f"{predict_at}/predict", json={"text": TEXTS[i % 40]})
                    self._note(r.status_code)
                    if r.status_code != 200:
                        continue
                    pid = r.json()["prediction_id"]
                    with self._lock:
                        self.predicted.append(pid)
                    body = {"prediction_id": pid, "label": "positive"}
                    f = client.post(f"{feedback_at}/feedback", json=body)
                    self._note(f.status_code)
                    if 200 <= f.status_code < 300:
                        with self._lock:
                            self.acked.append(pid)
                    elif f.status_code == 503:
                        with self._lock:
                            self.retry_after.append(f.headers.get("retry-after"))
                except httpx.HTTPError as exc:
                    self._note(type(exc).__name__)

    def _note(self, code: int | str) -> None:
        with self._lock:
            self.codes.append(code)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def counts(self) -> dict[int | str, int]:
        return {c: self.codes.count(c) for c in set(self.codes)}


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s"
        time.sleep(0.1)
    return time.monotonic() - started


def _stored(url: str, column: str, table: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {row[0] for row in conn.execute(f"SELECT {column} FROM {table}")}


def _store_is(replica: Replica, status: str) -> bool:
    code, body = replica.readyz()
    return code == 200 and body["store"] == status


def _check_nothing_acknowledged_was_lost(
    url: str, traffic: Traffic, a: Replica, b: Replica
) -> None:
    assert set(traffic.codes) <= OK_WHILE_AWAY, traffic.counts()
    for replica in (a, b):
        _wait(lambda r=replica: _store_is(r, "up"), 15, "the replica ready with its store up")
        assert sum(replica.metric("tuneserve_log_dropped_total")) == 0
    feedback = {"prediction_id": traffic.predicted[-1], "label": "positive"}
    assert httpx.post(f"{b.url}/feedback", json=feedback, timeout=10).status_code == 200
    a.stop()
    b.stop()  # flushes the prediction log
    missing = set(traffic.acked) - _stored(url, "prediction_id", "feedback")
    assert len(traffic.acked) > 30 and not missing, f"{len(missing)} acknowledged feedback lost"
    unlogged = set(traffic.predicted) - _stored(url, "id", "predictions")
    assert not unlogged, f"{len(unlogged)} answered predictions never reached the store"


def test_two_replicas_run_one_experiment(
    pg_url: Callable[[], str], replicas: Callable[..., tuple[Replica, Replica]]
) -> None:
    a, b = replicas(pg_url())
    assert a.readyz() == b.readyz() == (200, {"ready": True, "store": "up"})
    answer = httpx.post(f"{a.url}/predict", json={"text": "a fine film"}, timeout=10).json()
    feedback = {"prediction_id": answer["prediction_id"], "label": "positive"}
    stored = httpx.post(f"{b.url}/feedback", json=feedback, timeout=10)
    assert stored.status_code == 200 and stored.json()["status"] == "stored"
    weights = {"baseline": 0.25, "tuned": 0.75}
    changed = httpx.put(f"{a.url}/ab/config", json={"weights": weights}, timeout=10,
                        headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert changed.status_code == 200, changed.text
    seen_s = _wait(
        lambda: httpx.get(f"{b.url}/ab/config", timeout=5).json()["shares"] == weights,
        CONVERGE_S, "the weight change on replica A seen on replica B",
    )  # fmt: skip
    print(f"replica B followed replica A's weight change in {seen_s:.2f} s")


def test_killed_store_backends_under_load_lose_no_acknowledged_feedback(
    pg_url: Callable[[], str], replicas: Callable[..., tuple[Replica, Replica]]
) -> None:
    url = pg_url()
    name = f"replicas-{uuid.uuid4().hex[:8]}"
    a, b = replicas(named(url, name), workers=2)
    traffic = Traffic([a.url, b.url])
    killed = []
    try:
        for _ in range(2):
            time.sleep(2.0)
            killed.append(terminate(url, name))  # every store connection of both replicas
        time.sleep(2.0)
    finally:
        traffic.stop()
    assert all(n >= 4 for n in killed), killed  # 2 replicas x 2 workers x 2 pools at least
    print(f"backends killed {killed}; answers {traffic.counts()}")
    _check_nothing_acknowledged_was_lost(url, traffic, a, b)


def test_a_store_outage_degrades_feedback_only_and_heals(
    pg_url: Callable[[], str],
    replicas: Callable[..., tuple[Replica, Replica]],
    request: pytest.FixtureRequest,
) -> None:
    url = pg_url()
    proxy = TcpProxy(url)
    request.addfinalizer(proxy.close)  # after the replicas have stopped (their fixture's end)
    a, b = replicas(proxy.url())
    traffic = Traffic([a.url, b.url])
    try:
        time.sleep(1.0)
        proxy.cut()
        away = len(traffic.codes)
        for replica in (a, b):  # still ready: predictions work without the store
            # at the first statement that fails: at once on a broken connection, after
            # store.pool_wait_s (2 s here) when waiting for a new one
            _wait(lambda r=replica: _store_is(r, "degraded"), 8, "the store reported degraded")
            assert replica.metric("tuneserve_store_up") == [0.0]
        report = httpx.get(f"{a.url}/ab/report", timeout=10)  # needs the store: 503, not 500
        assert (report.status_code, report.json()["kind"]) == (503, "unavailable")
        assert report.headers["retry-after"] == "1"
        time.sleep(2.0)
        during = traffic.codes[away:]
        proxy.restore()
        back_s = max(_wait(lambda r=r: _store_is(r, "up"), 15, "healed") for r in (a, b))
        time.sleep(1.0)
    finally:
        traffic.stop()
    assert during.count(200) > 10 and during.count(503) > 0, traffic.counts()
    assert set(traffic.retry_after) == {"1"}  # store.retry_after_s
    for replica in (a, b):
        assert replica.metric("tuneserve_store_up") == [1.0]
        text = replica.log.read_text()
        assert "experiment store unreachable" in text and "reachable again" in text
    print(f"healed {back_s:.1f} s after the store returned; answers {traffic.counts()}")
    _check_nothing_acknowledged_was_lost(url, traffic, a, b)


@pytest.fixture
def pgbouncer_url() -> str:
    """The URL of a PgBouncer in transaction mode in front of the test server (.ci/run starts
    it), its database emptied; skips without one, fails so under CI."""
    url = os.environ.get(PGBOUNCER_URL_ENV, "").strip()
    if not url:
        _pg_unavailable(f"{PGBOUNCER_URL_ENV} is not set (PgBouncer in transaction mode)")
    try:
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")
    except psycopg.Error as exc:
        _pg_unavailable(f"PgBouncer at {PGBOUNCER_URL_ENV} is unreachable: {exc}")
    return url


def test_two_replicas_through_pgbouncer_in_transaction_mode(
    pgbouncer_url: str, replicas: Callable[..., tuple[Replica, Replica]]
) -> None:
    a, b = replicas(pgbouncer_url, workers=2)
    for i in range(12):  # psycopg would prepare a statement run 5 times: PgBouncer would fail it
        predict_at, feedback_at = (a, b) if i % 2 else (b, a)
        r = httpx.post(f"{predict_at.url}/predict", json={"text": TEXTS[i]}, timeout=10)
        feedback = {"prediction_id": r.json()["prediction_id"], "label": "positive"}
        f = httpx.post(f"{feedback_at.url}/feedback", json=feedback, timeout=10)
        assert (r.status_code, f.status_code, f.json()["status"]) == (200, 200, "stored")
    weights = {"baseline": 0.5, "tuned": 0.5}
    for weight in (0.1, 0.9, 0.5):  # compare-and-set transactions under the advisory lock
        weights = {"baseline": weight, "tuned": 1 - weight}
        changed = httpx.put(f"{a.url}/ab/config", json={"weights": weights}, timeout=10,
                            headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert changed.status_code == 200, changed.text
    _wait(lambda: httpx.get(f"{b.url}/ab/config", timeout=5).json()["shares"] == weights,
          CONVERGE_S, "the weight change seen on replica B")  # fmt: skip
    _wait(lambda: httpx.get(f"{b.url}/ab/report", timeout=10).json()["variants"] and sum(
        v["labelled"] for v in httpx.get(f"{b.url}/ab/report", timeout=10).json()["variants"]
    ) == 12, 10, "every labelled prediction in the report")  # fmt: skip
    assert a.readyz()[1]["store"] == b.readyz()[1]["store"] == "up"
    for replica in (a, b):
        assert "prepared statement" not in replica.log.read_text()
