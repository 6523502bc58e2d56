"""The experiment store: prediction log, feedback, experiment history; SQLite (WAL) by default,
PostgreSQL given a URL (several replicas sharing one store).

A versioned schema: ``schema_version`` holds the last migration applied, and opening a store
applies the missing ones in order, in one transaction holding the store's write lock, so workers
that start together migrate once. Every worker opens its own connection; on SQLite, WAL mode and
a busy timeout let them write side by side; on PostgreSQL, a connection pool that heals after a
restart or failover (service/pool.py). The SQL is written once in a form both databases
accept; service/dialect.py translates the little that differs (``?`` placeholders and all).

A row's ``unit`` says how it was routed: ``user`` or ``request`` (the experiment's traffic),
``forced`` (QA; the ``forced`` column repeats it) or ``excluded`` (outside the coverage). The
statistics count the experiment's traffic only, tested on ``unit`` alone (``_counted``).

Feedback has no foreign key to the prediction log on purpose: feedback that arrives before its
prediction row is written (the log is written off the request path), or on another worker, is
stored at once and joined later. Feedback is idempotent: the first label stored for a prediction
id wins; repeating it, or sending another label, changes nothing and says so.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.dialect import Connection, connect, is_url, redact
from service.pool import PoolSize
from service.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLE_COLUMNS,
    FeedbackOutcome,
    HistoryEntry,
    Labelled,
    NewTraffic,
    ShadowPair,
    StoredState,
    TrafficCount,
)
from tuneserve.errors import ConfigError


@dataclass(frozen=True)
class FeedbackResult:
    """What happened to a feedback post: ``stored`` or ``duplicate`` (with the label kept)."""

    status: str
    label: str


class Store:
    """The experiment store: one SQLite connection (its statements one at a time), or a pool of
    PostgreSQL connections (service/pool.py) that any number of threads share."""

    def __init__(
        self,
        location: Path | str,
        busy_timeout_ms: int = 5000,
        durable: bool = True,
        pool: PoolSize | None = None,
    ) -> None:
        """``location``: a SQLite file, or a ``postgresql://`` URL.

        ``durable``: every commit reaches the disk before it returns (feedback, the admin
        state); off for the prediction log, whose commits survive a crash of the process but not
        of the machine (SQLite: WAL with synchronous=NORMAL; PostgreSQL: synchronous_commit
        off), which spares an fsync per batch. ``pool``: the size of a PostgreSQL store's
        connection pool (store.pool_* in the serving config).

        Raises:
            ConfigError: the store cannot be opened or reached now.
            StoreUnavailableError: later, from any method, while a PostgreSQL server is away.
        """
        self.url = location if is_url(location) else None
        self.path = None if self.url else Path(location)
        self.location = redact(self.url) if self.url else str(self.path)
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn: Connection = connect(str(location), busy_timeout_ms, durable, pool)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(
                f"cannot open the experiment store {self.location}: {exc} (store.path in the "
                "serving config; a corrupt file must be moved away)"
            ) from exc
        # SQLite: one connection, so one statement (or transaction) at a time; PostgreSQL: the
        # pool lends each statement, and each thread's transaction, a connection of its own
        self._lock: AbstractContextManager[Any] = (
            threading.Lock() if self.conn.dialect == "sqlite" else nullcontext()
        )
        self.migrate()

    def version(self) -> int:
        """The schema version of the open store (0 for an empty one)."""
        if not self.conn.table_exists("schema_version"):
            return 0
        return int(self.conn.execute("SELECT version FROM schema_version").fetchone()[0])

    def migrate(self) -> None:
        """Apply every migration the store lacks, each in its own transaction."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                if self.version() == 0:
                    self.conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                    self.conn.execute("INSERT INTO schema_version VALUES (0)")
                current = self.version()
                if current > SCHEMA_VERSION:
                    raise ConfigError(
                        f"the experiment store {self.location} has schema version {current}, newer "
                        f"than this tuneserve's {SCHEMA_VERSION}: upgrade tuneserve"
                    )
                for statements in MIGRATIONS[current:]:
                    for statement in statements:
                        self.conn.execute(statement)
                self.conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def _rows(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of one read query, under the connection's lock."""
        with self._lock:
            rows: list[Any] = self.conn.execute(statement, params).fetchall()
        return rows

    def log_predictions(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert prediction rows in one transaction (ids already present are kept)."""
        self.log_rows("predictions", rows)

    def log_rows(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows of ``predictions`` or ``shadow`` in one transaction (known ids are kept)."""
        columns = TABLE_COLUMNS[table]
        marks = ", ".join("?" for _ in columns)
        values = [tuple(row.get(c) for c in columns) for row in rows]
        with self._lock:
            self.conn.execute("BEGIN")
            try:
                self.conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
                    "ON CONFLICT DO NOTHING",
                    values,
                )
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def add_feedback(self, prediction_id: str, label: str) -> FeedbackResult:
        """Store feedback durably before returning; the first label for an id wins."""
        with self._lock:
            cursor = self.conn.execute(
                "INSERT INTO feedback (prediction_id, ts, label) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (prediction_id, time.time(), label),
            )
            if cursor.rowcount == 1:
                return FeedbackResult("stored", label)
            kept = self.conn.execute(
                "SELECT label FROM feedback WHERE prediction_id = ?", (prediction_id,)
            ).fetchone()[0]
        return FeedbackResult("duplicate", str(kept))

    def variant_of(self, prediction_id: str) -> str | None:
        """The variant that answered ``prediction_id``, once its row is written."""
        with self._lock:
            row = self.conn.execute(
                "SELECT variant FROM predictions WHERE id = ?", (prediction_id,)
            ).fetchone()
        return str(row[0]) if row else None

    def record_change(self, change: dict[str, Any]) -> None:
        """Append an experiment config change to the history."""
        with self._lock:
            self.conn.execute(
                "INSERT INTO experiment_history (ts, change) VALUES (?, ?)",
                (time.time(), json.dumps(change, sort_keys=True)),
            )

    def state_version(self) -> int:
        """The version of the stored experiment state (0: none stored yet)."""
        with self._lock:
            row = self.conn.execute("SELECT version FROM experiment_state").fetchone()
        return int(row[0]) if row else 0

    def get_state(self) -> StoredState:
        """The stored experiment state and its version."""
        with self._lock:
            row = self.conn.execute("SELECT version, state FROM experiment_state").fetchone()
        return StoredState(int(row[0]), json.loads(row[1])) if row else StoredState(0, None)

    def put_state(
        self, state: dict[str, Any], change: dict[str, Any], expected_version: int | None = None
    ) -> int | None:
        """Store a new experiment state and its change in the history, atomically; with
        ``expected_version``, only if the stored state is still that version (else None)."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                row = self.conn.execute("SELECT version FROM experiment_state").fetchone()
                current = int(row[0]) if row else 0
                if expected_version is not None and current != expected_version:
                    self.conn.execute("ROLLBACK")
                    return None
                version = current + 1
                self.conn.execute(
                    "INSERT INTO experiment_state (id, version, state) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
                    "state = excluded.state",
                    (version, json.dumps(state, sort_keys=True)),
                )
                self.conn.execute(
                    "INSERT INTO experiment_history (ts, change) VALUES (?, ?)",
                    (time.time(), json.dumps(change | {"version": version}, sort_keys=True)),
                )
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return version

    def history(self) -> list[HistoryEntry]:
        """Every recorded change, oldest first."""
        rows = self._rows("SELECT ts, change FROM experiment_history ORDER BY id")
        return [HistoryEntry(float(ts), json.loads(change)) for ts, change in rows]

    def traffic_summary(self, since: float, salt: str | None = None) -> list[TrafficCount]:
        """Every logged request (of the experiment ``salt`` names) counted in the database, by
        variant, unit, whether stamped at or after ``since``, and whether it failed."""
        where, params = _of_experiment(salt)
        rows = self._rows(
            "SELECT variant, unit, CASE WHEN ts >= ? THEN 1 ELSE 0 END, "
            "CASE WHEN error IS NULL OR error = '' THEN 0 ELSE 1 END, COUNT(*) "
            f"FROM predictions WHERE {where} GROUP BY 1, 2, 3, 4",
            (since, *params),
        )
        return [TrafficCount(str(v), str(u), bool(c), bool(f), int(n)) for v, u, c, f, n in rows]

    def latencies(self, salt: str | None = None) -> dict[str, list[float]]:
        """Per variant, the latency in ms of every request of the experiment that was answered
        (not forced, not excluded, not failed)."""
        where, params = _of_experiment(salt)
        rows = self._rows(
            f"SELECT variant, latency_ms FROM predictions WHERE {_counted()} "
            f"AND (error IS NULL OR error = '') AND {where}",
            params,
        )
        out: dict[str, list[float]] = {}
        for variant, latency in rows:
            out.setdefault(str(variant), []).append(float(latency))
        return out

    def traffic_after(
        self, after: float, settled_until: float, salt: str | None = None
    ) -> list[NewTraffic]:
        """Per variant, the experiment's traffic (not forced, not excluded) stamped after
        ``after``: all of it, and the part stamped at or before ``settled_until``."""
        where, params = _of_experiment(salt)
        rows = self._rows(
            "SELECT variant, SUM(CASE WHEN ts <= ? THEN 1 ELSE 0 END), COUNT(*) "
            f"FROM predictions WHERE ts > ? AND {_counted()} AND {where} GROUP BY variant",
            (settled_until, after, *params),
        )
        return [NewTraffic(str(v), int(settled), int(n)) for v, settled, n in rows]

    def outcomes_after(
        self, after: float, since: float, variants: Sequence[str], salt: str | None = None
    ) -> list[FeedbackOutcome]:
        """(feedback time, variant, correct) of the experiment's labelled predictions of
        ``variants`` answered at or after ``since``, whose feedback was stamped after ``after``;
        in the order the feedback arrived (its time, then the prediction id)."""
        where, params = _of_experiment(salt, "p.")
        marks = ", ".join("?" for _ in variants)
        rows = self._rows(
            "SELECT f.ts, p.variant, p.label = f.label FROM feedback f "
            "JOIN predictions p ON p.id = f.prediction_id "
            f"WHERE f.ts > ? AND p.ts >= ? AND p.variant IN ({marks}) AND {_counted('p.')} "
            f"AND {where} ORDER BY f.ts, f.prediction_id",
            (after, since, *variants, *params),
        )
        return [FeedbackOutcome(float(ts), str(v), bool(ok)) for ts, v, ok in rows]

    def labelled(self, include_forced: bool = False, salt: str | None = None) -> list[Labelled]:
        """(variant, time answered, correct, latency_ms) of every prediction with feedback (of
        the experiment ``salt`` names), in the order the feedback arrived (the order the
        always-valid test takes, as the accuracy guardrail does); forced traffic only when asked
        for, traffic outside the coverage never."""
        where, params = _of_experiment(salt, "p.")
        rows = self._rows(
            "SELECT p.variant, p.ts, p.label = f.label, p.latency_ms FROM predictions p "
            "JOIN feedback f ON f.prediction_id = p.id "
            f"WHERE {_counted('p.', include_forced)} AND {where} "
            "ORDER BY f.ts, f.prediction_id",
            params,
        )
        return [Labelled(str(v), float(ts), bool(ok), float(lat)) for v, ts, ok, lat in rows]

    def shadow_pairs(self) -> list[ShadowPair]:
        """(shadow variant, live variant, live label, shadow label, true label or None) of
        every shadow-scored prediction."""
        rows = self._rows(
            "SELECT s.variant, s.live_variant, s.live_label, s.label, f.label FROM shadow s "
            "LEFT JOIN feedback f ON f.prediction_id = s.prediction_id"
        )
        return [ShadowPair(str(a), str(b), str(c), str(d), None if e is None else str(e))
                for a, b, c, d, e in rows]  # fmt: skip

    def count(self, table: str) -> int:
        """Rows in ``predictions``, ``feedback``, ``experiment_history`` or ``shadow``."""
        if table not in ("predictions", "feedback", "experiment_history", "shadow"):
            raise ValueError(f"unknown table {table!r}")
        with self._lock:
            return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        """Close the connection (or the pool)."""
        with self._lock:
            self.conn.close()


def _counted(prefix: str = "", include_forced: bool = False) -> str:
    """A WHERE clause for the rows the statistics count: the experiment's traffic, forced rows
    too only when asked for, rows outside the coverage never (told by ``unit`` alone)."""
    left_out = "'excluded'" if include_forced else "'forced', 'excluded'"
    return f"{prefix}unit NOT IN ({left_out})"


def _of_experiment(salt: str | None, prefix: str = "") -> tuple[str, tuple[str, ...]]:
    """A WHERE clause for the rows of one experiment (rows logged before salts were recorded
    count for every experiment); every row when ``salt`` is None."""
    if salt is None:
        return "1 = 1", ()
    return f"({prefix}salt = ? OR {prefix}salt IS NULL)", (salt,)


def unit_hash(salt: str, unit_id: str | None) -> str | None:
    """What the log keeps of a user id: a salted sha256, never the id itself."""
    if unit_id is None:
        return None
    return hashlib.sha256(f"log:{salt}:{unit_id}".encode()).hexdigest()[:32]
