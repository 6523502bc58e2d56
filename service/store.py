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
from collections.abc import Callable, Sequence
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
    Lease,
    NewTraffic,
    ShadowCounts,
    ShadowPair,
    StoredState,
    VariantSummary,
    WindowFigures,
)
from service.stats import p99_rank
from tuneserve.errors import ConfigError
from tuneserve.percentiles import fraction, percentiles

StateUpdate = tuple[dict[str, Any], dict[str, Any]]  # a new experiment state and its change


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
        for version, state in self._rows("SELECT version, state FROM experiment_state"):
            return StoredState(int(version), json.loads(state))
        return StoredState(0, None)

    def put_state(
        self,
        state: dict[str, Any],
        change: dict[str, Any],
        expected_version: int | None = None,
        leader: str | None = None,
    ) -> int | None:
        """Store a new experiment state and its change in the history, atomically; with
        ``expected_version``, only if the stored state is still that version, and with
        ``leader``, only while that holder's lease is in force (else None)."""

        def update(current: int, _: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
            if expected_version is not None and current != expected_version:
                return None
            return state, change

        written = self.update_state(update, leader)
        return None if written is None else written.version

    def update_state(
        self,
        update: Callable[[int, dict[str, Any] | None], StateUpdate | None],
        leader: str | None = None,
        also: Callable[[Connection, int, dict[str, Any]], None] | None = None,
    ) -> StoredState | None:
        """Read, change and write the experiment state in one transaction under the store's
        write lock, so no other write comes between: ``update(version, state)`` gives the new
        state and its change for the history (None: write nothing; an exception: roll back and
        raise it). With ``leader``, only while that holder's lease is in force. ``also(conn,
        version, change)`` writes more in the same transaction (a rollout event). The new
        version and state, or None when nothing was written."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                row = self.conn.execute("SELECT version, state FROM experiment_state").fetchone()
                current = int(row[0]) if row else 0
                wanted = update(current, json.loads(row[1]) if row else None)
                if wanted is None or (leader is not None and not self._holds_lease(leader)):
                    self.conn.execute("ROLLBACK")
                    return None
                state, change = wanted
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
                if also is not None:
                    also(self.conn, version, change)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return StoredState(version, state)

    def leader(self) -> Lease | None:
        """The experiment leader's lease as stored (None: never taken)."""
        rows = self._rows("SELECT holder, term, expires_at FROM experiment_leader")
        return Lease(str(rows[0][0]), int(rows[0][1]), float(rows[0][2])) if rows else None

    def claim_lease(self, holder: str, lease_s: float) -> Lease:
        """Take or renew the experiment leader's lease for ``holder`` for ``lease_s`` unless
        another holder's has not run out (by the store's clock), in one transaction under the
        store's write lock; the lease in force afterwards. A new holder raises the term."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                now = self._clock()
                row = self.conn.execute(
                    "SELECT holder, term, expires_at FROM experiment_leader"
                ).fetchone()
                if row is not None and row[0] != holder and float(row[2]) > now:
                    lease = Lease(str(row[0]), int(row[1]), float(row[2]))
                else:
                    term = (int(row[1]) if row else 0) + (0 if row and row[0] == holder else 1)
                    lease = Lease(holder, term, now + lease_s)
                    self.conn.execute(
                        "INSERT INTO experiment_leader (id, holder, term, expires_at) "
                        "VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                        "holder = excluded.holder, term = excluded.term, "
                        "expires_at = excluded.expires_at",
                        lease,
                    )
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return lease

    def release_lease(self, holder: str) -> None:
        """End ``holder``'s lease now (if it still holds it), so another worker takes over."""
        with self._lock:
            self.conn.execute(
                "UPDATE experiment_leader SET expires_at = 0 WHERE holder = ?", (holder,)
            )

    def _holds_lease(self, holder: str) -> bool:
        """Whether ``holder``'s lease is in force (inside the caller's transaction)."""
        row = self.conn.execute("SELECT holder, expires_at FROM experiment_leader").fetchone()
        return row is not None and row[0] == holder and float(row[1]) > self._clock()

    def _clock(self) -> float:
        """Now by the store's clock (PostgreSQL's, so that replicas' clocks do not matter)."""
        if self.conn.dialect == "postgresql":
            return float(self.conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
                         .fetchone()[0])  # fmt: skip
        return time.time()

    def window(self, variant: str, since: float, salt: str | None = None) -> WindowFigures:
        """The guardrail window of ``variant``, store-wide: its experiment requests (not forced,
        not excluded) stamped at or after ``since``, those that failed, and the p99 latency of
        the rest (nearest rank, as ``stats.p99``; only the slowest 1% are read)."""
        where, params = _of_experiment(salt)
        rows = f"FROM predictions WHERE variant = ? AND ts >= ? AND {_counted()} AND {where}"
        answered = "error IS NULL OR error = ''"
        ((total, ok),) = self._rows(
            f"SELECT COUNT(*), SUM(CASE WHEN {answered} THEN 1 ELSE 0 END) {rows}",
            (variant, since, *params),
        )
        total, ok = int(total), int(ok or 0)
        if not ok:
            return WindowFigures(total, total, 0.0)
        slowest = self._rows(
            f"SELECT latency_ms {rows} AND ({answered}) ORDER BY latency_ms DESC "
            f"LIMIT {ok - p99_rank(ok) + 1}",
            (variant, since, *params),
        )  # rows written between the two reads move the p99 by a rank at most
        return WindowFigures(total, total - ok, float(slowest[-1][0]))

    def history(self) -> list[HistoryEntry]:
        """Every recorded change, oldest first."""
        rows = self._rows("SELECT ts, change FROM experiment_history ORDER BY id")
        return [HistoryEntry(float(ts), json.loads(change)) for ts, change in rows]

    def variant_summary(
        self, since: float, salt: str | None = None, qs: Sequence[float] = ()
    ) -> list[VariantSummary]:
        """Per variant, the logged requests (of the experiment ``salt`` names) counted in the
        database: the experiment's traffic, the part stamped at or after ``since``, the part
        that failed, the forced and the excluded; and the nearest-rank percentiles ``qs``
        (tuneserve.percentiles) of the answered traffic's latencies. PostgreSQL computes them in
        the same query (``percentile_disc``, the same definition); SQLite has no such aggregate,
        so there they come from the one Python function over ``latencies``, a second query."""
        where, params = _of_experiment(salt)
        fractions = [fraction(q) for q in qs]
        on_postgres = self.url is not None and bool(qs)
        percentile_disc = (
            f", percentile_disc(ARRAY[{', '.join('?' for _ in qs)}]) WITHIN GROUP "
            f"(ORDER BY latency_ms) FILTER (WHERE {_counted()} AND {_ANSWERED})"
            if on_postgres
            else ""
        )
        rows = self._rows(
            f"SELECT variant, SUM(CASE WHEN {_counted()} THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN {_counted()} AND ts >= ? THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN {_counted()} AND NOT {_ANSWERED} THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN unit = 'forced' THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN unit = 'excluded' THEN 1 ELSE 0 END){percentile_disc} "
            f"FROM predictions WHERE {where} GROUP BY variant",
            (since, *(fractions if on_postgres else ()), *params),
        )
        if on_postgres:
            latency = {
                str(row[0]): dict(zip(qs, map(float, row[6]), strict=True))
                for row in rows
                if row[6] is not None
            }
        else:
            answered = self.latencies(salt) if qs else {}
            latency = {v: percentiles(values, qs) for v, values in answered.items()}
        return [
            VariantSummary(str(v), int(n), int(now), int(failed), int(forced), int(excluded),
                           latency.get(str(v), {}))
            for v, n, now, failed, forced, excluded, *_ in rows
        ]  # fmt: skip

    def latencies(self, salt: str | None = None) -> dict[str, list[float]]:
        """Per variant, the latency in ms of every request of the experiment that was answered
        (not forced, not excluded, not failed)."""
        where, params = _of_experiment(salt)
        rows = self._rows(
            f"SELECT variant, latency_ms FROM predictions WHERE {_counted()} "
            f"AND {_ANSWERED} AND {where}",
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

    def shadow_counts(self) -> list[ShadowCounts]:
        """Per shadow variant, its scored predictions counted in the database: all, agreeing
        with the live answer, with a true label, and of these each side's right answers and
        the pairs only one side got right."""
        rows = self._rows(
            "SELECT s.variant, COUNT(*), SUM(CASE WHEN s.live_label = s.label THEN 1 ELSE 0 END), "
            "COUNT(f.label), SUM(CASE WHEN s.live_label = f.label THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN s.label = f.label THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN s.live_label = f.label AND s.label <> f.label THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN s.label = f.label AND s.live_label <> f.label THEN 1 ELSE 0 END) "
            "FROM shadow s LEFT JOIN feedback f ON f.prediction_id = s.prediction_id "
            "GROUP BY s.variant"
        )
        return [ShadowCounts(str(row[0]), *map(int, row[1:])) for row in rows]

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


_ANSWERED = "(error IS NULL OR error = '')"  # a WHERE clause: the request was answered


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
