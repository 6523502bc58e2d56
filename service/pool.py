"""The PostgreSQL store's connections: a psycopg_pool pool that heals, and the store's health.

Every statement borrows a connection from the pool for itself; a transaction (``BEGIN`` ...
``COMMIT``/``ROLLBACK``) keeps the connection it borrowed, in its thread, until it ends. The pool
checks a connection before lending it (``ConnectionPool.check_connection``; a dead one has the
idle others checked at once), replaces broken ones, and reconnects with exponential backoff while
the server is away. Nothing lives in the session,
so PgBouncer in transaction mode (which hands each transaction any server connection) changes
nothing: no prepared statements (``prepare_threshold=None``), no session ``SET`` (the lock
timeout and the log's ``synchronous_commit = off`` are ``SET LOCAL`` in each transaction), only
transaction-level advisory locks.

A failure to reach the server (:class:`StoreUnavailableError`) flips the process's store health
(service/health.py) to down; the next statement that succeeds flips it back. Failures inside a
statement (bad SQL, a constraint) are the caller's and leave the health alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.health import HEALTH
from tuneserve.errors import TuneserveError

logger = logging.getLogger(__name__)

WRITE_LOCK_KEY = 0x74756E6573657276  # pg_advisory_xact_lock key of the store's write lock


class StoreUnavailableError(TuneserveError, ConnectionError):
    """The store's server cannot be reached (down, restarting, failing over, or a broken link)."""


@dataclass(frozen=True)
class PoolSize:
    """How many connections a store keeps and how long a statement waits for one."""

    min_size: int = 1
    max_size: int = 4
    wait_s: float = 5.0
    connect_timeout_s: float = 5.0
    reconnect_timeout_s: float = 300.0


def _lost(exc: BaseException) -> bool:
    """Whether a psycopg error means the server or the link is gone (not a bad statement)."""
    import psycopg
    from psycopg_pool import PoolTimeout

    if isinstance(exc, PoolTimeout | psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        return False  # a busy store, not a missing one
    return isinstance(exc, psycopg.OperationalError)


class _Result:
    """A statement's rows, read before its connection went back to the pool."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return list(self._rows)


class PgConnection:
    """The store's PostgreSQL connections: a pool; statements and transactions borrow from it."""

    dialect = "postgresql"

    def __init__(self, url: str, busy_timeout_ms: int, durable: bool, size: PoolSize) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.busy_timeout_ms, self.durable, self.size = int(busy_timeout_ms), durable, size
        self._local = threading.local()  # the connection of this thread's open transaction
        self._purging = threading.Lock()
        self._purger: threading.Thread | None = None
        kwargs: dict[str, Any] = {
            "autocommit": True,  # transactions are explicit
            "prepare_threshold": None,  # no server-side prepared statements (PgBouncer)
            "connect_timeout": max(1, round(size.connect_timeout_s)),
            # a server that vanished without closing (a network cut, a dead host) is noticed in
            # seconds, not after the kernel's TCP timeouts (client-side settings: no session state)
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 15_000,
        }
        psycopg.connect(url, **kwargs).close()  # a clear error now if it cannot be reached
        self.pool = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=size.min_size,
            max_size=size.max_size,
            timeout=size.wait_s,
            reconnect_timeout=size.reconnect_timeout_s,
            check=self._check,
            name="tuneserve-store",
            open=False,
        )
        self.pool.open(wait=False)

    def execute(self, statement: str, params: Sequence[Any] = ()) -> _Result:
        """Run one statement: in this thread's open transaction, else on a connection of its own.

        ``BEGIN`` (``BEGIN IMMEDIATE``: holding the store's write lock, as SQLite's does) borrows a
        connection until ``COMMIT`` or ``ROLLBACK``.

        Raises:
            StoreUnavailableError: the server cannot be reached.
        """
        from service.dialect import to_postgres

        word = statement.strip().upper()
        if word in ("BEGIN", "BEGIN IMMEDIATE"):
            self._begin(immediate=word == "BEGIN IMMEDIATE")
            return _Result([], -1)
        if word in ("COMMIT", "ROLLBACK"):
            self._end(word)
            return _Result([], -1)
        return self._run(lambda conn: conn.execute(to_postgres(statement), tuple(params) or None))

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per row (pipelined by psycopg)."""
        from service.dialect import to_postgres

        def many(conn: Any) -> None:
            with conn.cursor() as cursor:
                cursor.executemany(to_postgres(statement), rows)

        self._run(many)

    def table_exists(self, name: str) -> bool:
        """Whether the store has this table (in the connection's search_path)."""
        row = self.execute("SELECT to_regclass(?)", (name,)).fetchone()
        return row is not None and row[0] is not None

    def close(self) -> None:
        """Close every connection of the pool."""
        self.pool.close()

    def _run(self, work: Any) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # inside this thread's transaction
            return self._guard(lambda: _read(work(conn)))
        # a lone statement (a read, an idempotent insert) may run twice: once more on another
        # connection when its own broke (the pool discards that one)
        return self._guard(lambda: self._on_own_connection(work), retry=True)

    def _on_own_connection(self, work: Any) -> Any:
        with self.pool.connection(timeout=self._wait_s()) as conn:
            return _read(work(conn))

    def _wait_s(self) -> float:
        """How long to wait for a connection: the configured wait, short while the store is
        known to be down (a request should hear 503 at once, not hold a thread)."""
        return self.size.wait_s if HEALTH.up else min(self.size.wait_s, 0.5)

    def _check(self, conn: Any) -> None:
        """The pool's check of a connection before lending it; a dead one means its idle
        siblings are likely dead too (a restart, a failover): check them all, in the background,
        rather than find them one by one (the pool waits 1 s, 2 s ... between failed checks)."""
        from psycopg_pool import ConnectionPool

        try:
            ConnectionPool.check_connection(conn)
        except Exception:
            self._purge()
            raise

    def _purge(self, wait_s: float = 0.0) -> None:
        """A connection broke: check the idle ones now, in the background (a restarted or
        failed-over server broke them all), so the next statements get fresh connections rather
        than dead ones; wait up to ``wait_s`` for it (a vanished server may hold a check for
        seconds)."""
        if self._purging.acquire(blocking=False):  # else another thread is at it
            thread = threading.Thread(
                target=self._check_idle, name="tuneserve-store-check", daemon=True
            )
            thread.start()
            self._purger = thread
        if wait_s > 0 and self._purger is not None:
            self._purger.join(wait_s)

    def _check_idle(self) -> None:
        try:
            self.pool.check()
        except Exception:  # only a clean-up; the pool reconnects anyway
            logger.debug("store: checking the pool's idle connections failed")
        finally:
            self._purging.release()

    def _guard(self, call: Any, retry: bool = False) -> Any:
        """Run ``call``; a lost server becomes StoreUnavailableError and flips the health."""
        import psycopg
        from psycopg_pool import PoolTimeout

        started = time.monotonic()
        for attempt in (1, 2):
            try:
                result = call()
            except psycopg.Error as exc:
                if not _lost(exc):
                    HEALTH.ok()  # the server answered, with an error of the statement's own
                    raise
                if not isinstance(exc, PoolTimeout):
                    self._purge(wait_s=1.0)
                    if retry and attempt == 1:
                        continue
                HEALTH.failed(exc, started)
                raise StoreUnavailableError(
                    f"the experiment store cannot be reached ({type(exc).__name__})"
                ) from exc
            HEALTH.ok()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _begin(self, immediate: bool) -> None:
        if getattr(self._local, "conn", None) is not None:
            raise RuntimeError("a store transaction is already open in this thread")
        settings = [f"SET LOCAL lock_timeout = {self.busy_timeout_ms}"]
        if not self.durable:  # commits return before the WAL reaches the disk
            settings.append("SET LOCAL synchronous_commit = off")

        def begin() -> Any:
            conn = self.pool.getconn(timeout=self._wait_s())
            try:
                _begin_on(conn, settings, immediate)
            except BaseException:
                self.pool.putconn(conn)  # the pool discards a broken connection
                raise
            return conn

        self._local.conn = self._guard(begin, retry=True)  # nothing done yet: may run twice

    def _end(self, word: str) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if word == "ROLLBACK":  # after a COMMIT that failed: the transaction is over
                return
            raise RuntimeError("COMMIT without an open store transaction in this thread")
        self._local.conn = None
        try:
            if word == "COMMIT":
                self._guard(lambda: conn.execute("COMMIT"))
            elif not conn.closed:  # a rollback after a lost server has nothing to undo
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # the caller's error is the one to report
                    logger.debug("store: rollback on a broken connection failed")
        finally:
            self.pool.putconn(conn)  # the pool discards a broken connection


def _begin_on(conn: Any, settings: list[str], immediate: bool) -> None:
    conn.execute("BEGIN")
    for setting in settings:
        conn.execute(setting)
    if immediate:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))


def _read(cursor: Any) -> Any:
    """A cursor's rows and rowcount, read while its connection is still borrowed."""
    if cursor is None:
        return None
    rows = cursor.fetchall() if cursor.description is not None else []
    return _Result(rows, cursor.rowcount)
