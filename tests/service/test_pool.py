"""The PostgreSQL store's pool on the real server: an outage (through a proxy that is cut), killed
backends, the health it reports, the prediction log waiting for the store, no session state."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from service import metrics
from service.health import HEALTH
from service.pool import PoolSize, StoreUnavailableError
from service.predlog import PredictionLog
from service.store import Store
from tests.service.proxy import TcpProxy

FAST = PoolSize(min_size=1, max_size=3, wait_s=3.0, connect_timeout_s=2.0, reconnect_timeout_s=3.0)


@pytest.fixture
def proxied(pg_url: Callable[[], str]) -> Iterator[tuple[TcpProxy, str]]:
    """A fresh store schema, and a proxy in front of the server (its URL goes through it)."""
    url = pg_url()
    proxy = TcpProxy(url)
    yield proxy, proxy.url()
    proxy.close()


def _row(i: int) -> dict[str, Any]:
    return {"id": f"p{i}", "ts": time.time(), "variant": "tuned", "model_version": "m@1",
            "unit": "user", "unit_hash": "h", "forced": 0, "label": "positive",
            "score": 0.9, "latency_ms": 5.0, "salt": "s"}  # fmt: skip


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def _heals(store: Store) -> bool:
    try:
        store.count("feedback")
    except StoreUnavailableError:
        return False
    return True


def test_an_outage_fails_fast_as_unavailable_and_heals_without_a_new_store(
    proxied: tuple[TcpProxy, str], caplog: pytest.LogCaptureFixture
) -> None:
    proxy, url = proxied
    store = Store(url, pool=FAST)
    assert store.add_feedback("a", "positive").status == "stored" and HEALTH.up
    caplog.set_level(logging.INFO, logger="service.health")
    proxy.cut()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="cannot be reached"):
        store.add_feedback("b", "positive")
    with pytest.raises(StoreUnavailableError):  # known down: no long wait for a connection
        store.count("feedback")
    assert time.monotonic() - started < 2 * FAST.wait_s + 1
    assert not HEALTH.up and HEALTH.status()["store"] == "degraded"
    assert metrics.STORE_UP._value.get() == 0
    proxy.restore()
    healed_s = _wait(lambda: _heals(store), 10, "the store answers again")
    assert HEALTH.up and metrics.STORE_UP._value.get() == 1 and HEALTH.status() == {"store": "up"}
    assert store.add_feedback("b", "positive").status == "stored"
    assert store.count("feedback") == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "service.health"]
    assert sum("unreachable" in line for line in lines) == 1, lines  # one line per transition
    assert sum("reachable again" in line for line in lines) == 1, lines
    print(f"healed {healed_s:.1f} s after the proxy came back")


def named(url: str, name: str) -> str:
    """``url`` whose connections carry this application_name (so a test kills only its own)."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def terminate(url: str, name: str) -> int:
    """pg_terminate_backend on every connection named ``name``: what a failover or restart does
    to the store's connections (the database is shared; only ours are killed)."""
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
            "datname = current_database() AND pid <> pg_backend_pid() AND application_name = %s",
            (name,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_terminated_backends_cost_no_statement(pg_url: Callable[[], str]) -> None:
    url = pg_url()
    store = Store(named(url, "test-pool-kill"), pool=FAST)
    store.log_rows("predictions", [_row(0)])
    assert terminate(url, "test-pool-kill") >= 1
    # a lone statement runs again on a fresh connection; a transaction starts on one
    assert store.count("predictions") == 1
    store.log_rows("predictions", [_row(1)])
    assert store.add_feedback("p1", "positive").status == "stored"
    assert store.count("predictions") == 2 and HEALTH.up


def test_the_prediction_log_keeps_its_rows_through_an_outage(
    proxied: tuple[TcpProxy, str],
) -> None:
    proxy, url = proxied
    log = PredictionLog(lambda: Store(url, durable=False, pool=FAST), flush_interval_s=0.05)
    failed_before = metrics.LOG_DROPPED.labels(kind="write_failed")._value.get()
    for i in range(20):
        log.submit(_row(i))
    reader = Store(url, pool=FAST)
    _wait(lambda: reader.count("predictions") == 20, 5, "the first rows written")
    proxy.cut()
    for i in range(20, 120):  # answered while the store is away: their rows wait
        log.submit(_row(i))
    _wait(lambda: metrics.LOG_QUEUED._value.get() >= 100, 10, "the rows waiting, gauged")
    proxy.restore()
    _wait(lambda: _heals(reader) and reader.count("predictions") == 120, 15, "every row written")
    log.close()
    assert metrics.LOG_DROPPED.labels(kind="write_failed")._value.get() == failed_before


def test_no_session_state_and_no_prepared_statements(pg_url: Callable[[], str]) -> None:
    """What PgBouncer in transaction mode would lose: session SETs, prepared statements."""
    store, log = Store(pg_url(), pool=FAST), Store(pg_url(), durable=False, pool=FAST)
    for _ in range(10):  # psycopg prepares a statement run 5 times, unless told not to
        store.count("feedback")
        log.log_rows("predictions", [_row(0)])
    for each in (store, log):
        with each.conn.pool.connection() as conn:
            assert conn.prepare_threshold is None
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
            assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
