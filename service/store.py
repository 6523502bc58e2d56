"""The experiment store: prediction log, feedback, experiment history; SQLite (WAL) by default.

A versioned schema: ``schema_version`` holds the last migration applied, and opening a store
applies the missing ones in order, in one transaction each. Every worker opens its own
connection; WAL mode and a busy timeout let them write side by side.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneserve.errors import ConfigError

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE predictions (
            id TEXT PRIMARY KEY,
            ts REAL NOT NULL,
            variant TEXT NOT NULL,
            model_version TEXT NOT NULL,
            unit TEXT NOT NULL,
            unit_hash TEXT,
            forced INTEGER NOT NULL,
            label TEXT NOT NULL,
            score REAL NOT NULL,
            latency_ms REAL NOT NULL,
            text TEXT
        )""",
        "CREATE INDEX predictions_ts ON predictions (ts)",
        """CREATE TABLE feedback (
            prediction_id TEXT PRIMARY KEY,
            ts REAL NOT NULL,
            label TEXT NOT NULL
        )""",
        """CREATE TABLE experiment_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            change TEXT NOT NULL
        )""",
    ],
]
MIGRATIONS.append(
    [
        """CREATE TABLE experiment_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            state TEXT NOT NULL
        )""",
    ]
)
SCHEMA_VERSION = len(MIGRATIONS)

PREDICTION_COLUMNS = (
    "id", "ts", "variant", "model_version", "unit", "unit_hash", "forced", "label", "score",
    "latency_ms", "text",
)  # fmt: skip


@dataclass(frozen=True)
class FeedbackResult:
    """What happened to a feedback post: ``stored`` or ``duplicate`` (with the label kept)."""

    status: str
    label: str


class Store:
    """One connection to the experiment store (use one per worker thread that writes)."""

    def __init__(self, path: Path, busy_timeout_ms: int = 5000, durable: bool = True) -> None:
        """``durable``: every commit reaches the disk before it returns (feedback, the admin
        state); off for the prediction log, whose commits survive a crash of the process but not
        of the machine (WAL with synchronous=NORMAL), which spares an fsync per batch."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                str(path), timeout=busy_timeout_ms / 1000, check_same_thread=False,
                isolation_level=None,
            )  # fmt: skip
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self.conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(
                f"cannot open the experiment store {path}: {exc} (store.path in the serving "
                "config; a corrupt file must be moved away)"
            ) from exc
        if str(mode).lower() != "wal":
            raise ConfigError(f"the experiment store {path} cannot use WAL mode (got {mode})")
        self._lock = threading.Lock()
        self.migrate()

    def version(self) -> int:
        """The schema version of the open store (0 for an empty file)."""
        row = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if row is None:
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
                        f"the experiment store {self.path} has schema version {current}, newer "
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

    def log_predictions(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert prediction rows in one transaction (ids already present are kept)."""
        marks = ", ".join("?" for _ in PREDICTION_COLUMNS)
        values = [tuple(row.get(c) for c in PREDICTION_COLUMNS) for row in rows]
        with self._lock:
            self.conn.execute("BEGIN")
            try:
                self.conn.executemany(
                    f"INSERT OR IGNORE INTO predictions ({', '.join(PREDICTION_COLUMNS)}) "
                    f"VALUES ({marks})",
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
                "INSERT OR IGNORE INTO feedback (prediction_id, ts, label) VALUES (?, ?, ?)",
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

    def get_state(self) -> tuple[int, dict[str, Any] | None]:
        """The stored experiment state and its version."""
        with self._lock:
            row = self.conn.execute("SELECT version, state FROM experiment_state").fetchone()
        return (int(row[0]), json.loads(row[1])) if row else (0, None)

    def put_state(self, state: dict[str, Any], change: dict[str, Any]) -> int:
        """Store a new experiment state and its change in the history, atomically."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                row = self.conn.execute("SELECT version FROM experiment_state").fetchone()
                version = (int(row[0]) if row else 0) + 1
                self.conn.execute(
                    "INSERT OR REPLACE INTO experiment_state (id, version, state) VALUES (1, ?, ?)",
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

    def history(self) -> list[tuple[float, dict[str, Any]]]:
        """Every recorded change, oldest first."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT ts, change FROM experiment_history ORDER BY id"
            ).fetchall()
        return [(float(ts), json.loads(change)) for ts, change in rows]

    def served(self) -> list[tuple[str, bool, float]]:
        """(variant, forced, latency_ms) of every logged prediction."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT variant, forced, latency_ms FROM predictions"
            ).fetchall()
        return [(str(v), bool(forced), float(lat)) for v, forced, lat in rows]

    def labelled(self, include_forced: bool = False) -> list[tuple[str, float, bool, float]]:
        """(variant, time, correct, latency_ms) of every prediction with feedback, oldest first."""
        forced = "" if include_forced else "AND p.forced = 0"
        with self._lock:
            rows = self.conn.execute(
                "SELECT p.variant, p.ts, p.label = f.label, p.latency_ms FROM predictions p "
                f"JOIN feedback f ON f.prediction_id = p.id WHERE 1 = 1 {forced} ORDER BY p.ts"
            ).fetchall()
        return [(str(v), float(ts), bool(ok), float(lat)) for v, ts, ok, lat in rows]

    def count(self, table: str) -> int:
        """Rows in ``predictions``, ``feedback`` or ``experiment_history``."""
        if table not in ("predictions", "feedback", "experiment_history"):
            raise ValueError(f"unknown table {table!r}")
        with self._lock:
            return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self.conn.close()


def unit_hash(salt: str, unit_id: str | None) -> str | None:
    """What the log keeps of a user id: a salted sha256, never the id itself."""
    if unit_id is None:
        return None
    return hashlib.sha256(f"log:{salt}:{unit_id}".encode()).hexdigest()[:32]
