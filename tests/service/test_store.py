"""The experiment store (SQLite in WAL mode, or PostgreSQL) and the prediction log in front of it.

Tests taking ``new_store`` run twice: on a SQLite file and on a fresh schema of a real PostgreSQL
server ($TUNESERVE_TEST_PG_URL; skipped without one, failed under CI=true).
"""

from __future__ import annotations

import multiprocessing
import random
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service import metrics
from service.config import StoreConfig
from service.dialect import to_postgres
from service.predlog import PredictionLog
from service.schema import MIGRATIONS, SCHEMA_VERSION
from service.store import Store, unit_hash
from tests.service.conftest import free_port
from tuneserve.errors import ConfigError, DataError
from tuneserve.percentiles import percentiles

NewStore = Callable[[], Path | str]


def _row(i: int, variant: str = "tuned", label: str = "positive") -> dict[str, object]:
    return {"id": f"p{i}", "ts": time.time() + i, "variant": variant, "model_version": "m@1",
            "unit": "user", "unit_hash": unit_hash("s", f"u{i}"), "forced": 0, "label": label,
            "score": 0.9, "latency_ms": 5.0, "text": None}  # fmt: skip


def test_schema_is_versioned_and_migrated_once(new_store: NewStore) -> None:
    where = new_store()
    store = Store(where)
    assert store.version() == SCHEMA_VERSION
    if store.conn.dialect == "sqlite":
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.log_predictions([_row(1)])
    store.close()
    again = Store(where)  # reopening keeps the data and applies nothing twice
    assert again.version() == SCHEMA_VERSION and again.count("predictions") == 1
    assert again.conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1
    again.conn.execute("UPDATE schema_version SET version = 99")
    again.close()
    with pytest.raises(ConfigError, match="schema version 99, newer than"):
        Store(where)


def test_feedback_is_idempotent_and_joins_predictions_written_later(new_store: NewStore) -> None:
    store = Store(new_store())
    assert store.add_feedback("p1", "positive").status == "stored"  # before its prediction row
    repeat = store.add_feedback("p1", "negative")
    assert (repeat.status, repeat.label) == ("duplicate", "positive")  # the first label wins
    assert store.labelled() == []
    store.log_predictions([_row(1), _row(2, label="negative"), _row(1)])  # p1 twice: kept once
    store.add_feedback("p2", "positive")
    assert store.count("predictions") == 2 and store.count("feedback") == 2
    labelled = store.labelled()
    assert [(v, ok) for v, _, ok, _ in labelled] == [("tuned", True), ("tuned", False)]
    assert all(type(ok) is bool for _, _, ok, _ in labelled)  # SQLite says 1/0, PostgreSQL t/f
    assert store.variant_of("p2") == "tuned" and store.variant_of("nope") is None
    store.record_change({"weights": {"tuned": 0.5}})
    assert store.history()[0][1] == {"weights": {"tuned": 0.5}}


def test_every_statistics_query_tells_the_units_apart_alike(new_store: NewStore) -> None:
    """The experiment's traffic is unit user or request; forced and excluded rows are left out
    of every figure the same way (forced ones only by the queries that are asked for them)."""
    store = Store(new_store())
    t0 = time.time() - 100
    units = ["user", "request", "forced", "excluded"]
    store.log_predictions([
        _row(i) | {"id": unit, "ts": t0 + i, "unit": unit, "forced": int(unit == "forced"),
                   "salt": "s"}
        for i, unit in enumerate(units)
    ])  # fmt: skip
    for unit in units:
        store.add_feedback(unit, "positive")
    assert store.latencies("s") == {"tuned": [5.0, 5.0]}
    assert store.traffic_after(0.0, time.time(), "s") == [("tuned", 2, 2)]
    (new,) = store.traffic_after(0.0, t0 + 0.5, "s")
    assert (new.variant, new.settled, new.requests) == ("tuned", 1, 2)
    outcomes = store.outcomes_after(0.0, 0.0, ["tuned"], "s")
    assert [(o.variant, o.correct) for o in outcomes] == [("tuned", True)] * 2
    assert [row.ts for row in store.labelled(salt="s")] == [t0, t0 + 1]
    assert [row.ts for row in store.labelled(include_forced=True, salt="s")] == [t0, t0 + 1, t0 + 2]
    # traffic user + request, current: the request row (at since), forced and excluded 1 each
    assert store.variant_summary(t0 + 1, "s", (50, 100)) == [
        ("tuned", 2, 1, 0, 1, 1, {50: 5.0, 100: 5.0})
    ]
    store.close()


def test_latency_percentiles_are_the_one_definitions_on_both_backends(new_store: NewStore) -> None:
    """PostgreSQL computes the report's percentiles in SQL (percentile_disc), SQLite in Python:
    both give tuneserve.percentiles' figures of the answered traffic's latencies, exactly."""
    store = Store(new_store())
    rng = random.Random(7)
    qs = (0, 0.1, 7, 50, 95, 99, 99.9, 100)
    sizes = {"a": 1000, "b": 100, "c": 1, "d": 37}  # 99.9 of 1000 and 7 of 100: exact ranks
    rows, expected = [], {}
    for variant, n in sizes.items():
        latencies = [float(rng.choice([1, 2, 2, 3])) if variant == "d" else rng.expovariate(0.05)
                     for _ in range(n)]  # fmt: skip
        expected[variant] = percentiles(latencies, qs)
        rows += [_row(i) | {"id": f"{variant}{i}", "variant": variant, "latency_ms": lat,
                            "salt": "s"} for i, lat in enumerate(latencies)]  # fmt: skip
        left_out = [{"unit": "forced", "forced": 1}, {"unit": "excluded"}, {"error": "deadline"},
                    {"salt": "another"}]  # fmt: skip
        rows += [_row(i) | {"id": f"{variant}-out{i}", "variant": variant, "latency_ms": 1e6,
                            "salt": "s"} | extra for i, extra in enumerate(left_out)]  # fmt: skip
    rows += [_row(1) | {"id": "e1", "variant": "e", "error": "internal", "salt": "s"}]
    store.log_predictions(rows)
    summary = {row.variant: row for row in store.variant_summary(0.0, "s", qs)}
    for variant, n in sizes.items():
        assert summary[variant].latency_ms == expected[variant], variant
        assert (summary[variant].traffic, summary[variant].errors) == (n + 1, 1)
        assert (summary[variant].forced, summary[variant].excluded) == (1, 1)
    assert summary["a"].latency_ms[99.9] < summary["a"].latency_ms[100]  # rank 999, not 1000
    assert summary["e"].latency_ms == {} and summary["e"].errors == 1  # nothing answered
    unsalted = {row.variant: row for row in store.variant_summary(0.0, None, (100,))}
    assert unsalted["a"].latency_ms == {100: 1e6}  # every experiment's rows, when no salt given
    with pytest.raises(DataError, match="a percentile must be from 0 to 100, got 101"):
        store.variant_summary(0.0, "s", (101,))
    store.close()


def test_shadow_counts_add_up_the_pairs(new_store: NewStore) -> None:
    store = Store(new_store())
    labels = ["negative", "positive"]
    shadow = []
    for i in range(40):
        live, own = labels[i % 2], labels[(i // 2) % 2]
        shadow.append({"prediction_id": f"p{i}", "ts": 1.0, "variant": f"s{i % 3}",
                       "model_version": "m", "live_variant": "base", "live_label": live,
                       "label": own, "score": 0.5, "latency_ms": 1.0})  # fmt: skip
        if i % 5:
            store.add_feedback(f"p{i}", labels[(i // 4) % 2])
    store.log_rows("shadow", shadow)
    for counts in store.shadow_counts():
        pairs = [p for p in store.shadow_pairs() if p.variant == counts.variant]
        known = [p for p in pairs if p.truth is not None]
        assert counts == (
            counts.variant, len(pairs), sum(p.live_label == p.label for p in pairs), len(known),
            sum(p.live_label == p.truth for p in known), sum(p.label == p.truth for p in known),
            sum(p.live_label == p.truth != p.label for p in known),
            sum(p.label == p.truth != p.live_label for p in known),
        )  # fmt: skip
    assert sorted(c.variant for c in store.shadow_counts()) == ["s0", "s1", "s2"]
    store.close()


def test_timestamps_and_scores_keep_double_precision(new_store: NewStore) -> None:
    store = Store(new_store())
    row = _row(1) | {"ts": 1_790_000_000.123456, "score": 0.123456789012, "latency_ms": 1e-3}
    store.log_predictions([row])
    ts, latency = store.conn.execute("SELECT ts, latency_ms FROM predictions").fetchone()
    assert ts == 1_790_000_000.123456 and latency == 1e-3  # a float4 column would round these
    assert store.latencies() == {"tuned": [1e-3]}
    score = store.conn.execute("SELECT score FROM predictions").fetchone()[0]
    assert score == 0.123456789012


def test_admin_state_versions_count_up_and_replace_the_state(new_store: NewStore) -> None:
    store = Store(new_store())
    assert store.get_state() == (0, None)
    assert store.put_state({"salt": "a"}, {"by": "config"}) == 1
    assert store.put_state({"salt": "b"}, {"by": "admin"}) == 2
    assert store.get_state() == (2, {"salt": "b"}) and store.state_version() == 2
    assert store.get_state().state == {"salt": "b"} and store.history()[-1].change["version"] == 2
    assert [c["version"] for _, c in store.history()] == [1, 2]


def _post_feedback(where: str, worker: int, n: int) -> None:
    store = Store(where)
    for i in range(n):
        store.add_feedback(f"w{worker}-{i}", "positive")
    store.close()


def test_concurrent_writers_lose_nothing(new_store: NewStore) -> None:
    where = str(new_store())
    Store(where).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_post_feedback, args=(where, w, 150)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    assert Store(where).count("feedback") == 600


def _open_together(where: str, start: multiprocessing.synchronize.Barrier, worker: int) -> None:
    start.wait(30)
    store = Store(where)  # every worker migrates the empty store at the same moment
    store.add_feedback(f"w{worker}", "positive")
    store.close()


def test_workers_migrating_an_empty_store_at_once_migrate_it_once(new_store: NewStore) -> None:
    where = str(new_store())
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_together, args=(where, start, w)) for w in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    store = Store(where)
    assert store.conn.execute("SELECT version FROM schema_version").fetchall() == [
        (SCHEMA_VERSION,)
    ]
    assert store.count("feedback") == 6


def test_durable_flag_sets_how_commits_reach_the_disk(new_store: NewStore) -> None:
    where = new_store()
    durable, log = Store(where), Store(where, durable=False)
    if durable.conn.dialect == "sqlite":
        query, expected = "PRAGMA synchronous", ((2,), (1,))  # FULL, NORMAL
    else:  # in each transaction (SET LOCAL): a session setting would not survive PgBouncer
        query, expected = "SHOW synchronous_commit", (("on",), ("off",))
        assert log.conn.execute(query).fetchone() == ("on",)  # the session is left alone
    got = []
    for store in (durable, log):
        store.conn.execute("BEGIN")  # as the log's writes run
        got.append(tuple(store.conn.execute(query).fetchone()))
        store.conn.execute("ROLLBACK")
    assert tuple(got) == expected


def test_prediction_log_flushes_on_close_and_counts_what_it_drops(new_store: NewStore) -> None:
    where = new_store()
    log = PredictionLog(lambda: Store(where), max_queue=5)
    dropped_before = metrics.LOG_DROPPED.labels(kind="queue_full")._value.get()
    with log.store._lock:  # the writer is stuck behind a slow store: the queue fills up
        accepted = sum(log.submit(_row(i)) for i in range(50))
        time.sleep(0.2)
    log.close()
    dropped = metrics.LOG_DROPPED.labels(kind="queue_full")._value.get() - dropped_before
    assert accepted + dropped == 50 and dropped > 0
    assert Store(where).count("predictions") == accepted  # everything accepted was flushed


# The schema of migrations 1-2 as tuneserve first shipped them: stores made then must still open.
_FIRST_SCHEMA = [
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version VALUES (2)",
    """CREATE TABLE predictions (id TEXT PRIMARY KEY, ts REAL NOT NULL, variant TEXT NOT NULL,
        model_version TEXT NOT NULL, unit TEXT NOT NULL, unit_hash TEXT, forced INTEGER NOT NULL,
        label TEXT NOT NULL, score REAL NOT NULL, latency_ms REAL NOT NULL, text TEXT)""",
    "CREATE INDEX predictions_ts ON predictions (ts)",
    "CREATE TABLE feedback (prediction_id TEXT PRIMARY KEY, ts REAL NOT NULL, label TEXT NOT NULL)",
    """CREATE TABLE experiment_history (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
        change TEXT NOT NULL)""",
    """CREATE TABLE experiment_state (id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL, state TEXT NOT NULL)""",
    """INSERT INTO predictions VALUES ('old1', 1700000000.5, 'tuned', 'm@1', 'user', 'h', 0,
        'positive', 0.75, 12.5, NULL)""",
    "INSERT INTO feedback VALUES ('old1', 1700000001.0, 'positive')",
    """INSERT INTO experiment_state VALUES (1, 3, '{"salt": "old"}')""",
    """INSERT INTO experiment_history (ts, change) VALUES (1700000000.0, '{"by": "config"}')""",
]


def test_a_store_made_by_the_first_schema_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        for statement in _FIRST_SCHEMA:
            old.execute(statement)
    old.close()
    store = Store(path)
    assert store.version() == SCHEMA_VERSION
    assert store.labelled() == [("tuned", 1700000000.5, True, 12.5)]
    assert store.get_state() == (3, {"salt": "old"})
    assert store.put_state({"salt": "new"}, {"by": "admin"}) == 4
    assert [c["by"] for _, c in store.history()] == ["config", "admin"]
    store.log_predictions([_row(2)])
    fresh = Store(tmp_path / "fresh.sqlite")
    fresh.log_predictions([_row(2)])
    typeof = "SELECT typeof(ts), typeof(score), typeof(latency_ms) FROM predictions WHERE id='p2'"
    assert store.conn.execute(typeof).fetchone() == fresh.conn.execute(typeof).fetchone()
    assert fresh.conn.execute(typeof).fetchone() == ("real", "real", "real")


def test_migrations_are_written_in_the_portable_form() -> None:
    for statement in (s for migration in MIGRATIONS for s in migration):
        assert not re.search(r"\bREAL\b", statement), f"REAL is float4 on PostgreSQL: {statement}"
        to_postgres(statement)  # raises on SQLite-only SQL


def test_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot open the experiment store"):
        Store(blocker / "x.sqlite")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="file is not a database"):
        Store(corrupt)


def test_unreachable_postgres_is_a_clear_error_without_the_password() -> None:
    url = f"postgresql://tuneserve:pw-s3cret@127.0.0.1:{free_port()}/tuneserve"
    with pytest.raises(ConfigError) as caught:
        Store(url)
    message = str(caught.value)
    assert "cannot open the experiment store postgresql://tuneserve:***@127.0.0.1:" in message
    assert "Connection refused" in message and "store.url" in message
    assert "pw-s3cret" not in message


def test_wrong_postgres_password_is_a_clear_error(pg_url: Callable[[], str]) -> None:
    url = pg_url()
    wrong = re.sub(r"^(postgresql://[^:]+):[^@]*@", r"\1:not-the-pw@", url)
    with pytest.raises(ConfigError, match="password authentication failed") as caught:
        Store(wrong)
    assert "not-the-pw" not in str(caught.value)


def test_store_location_comes_from_the_env_then_url_then_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = StoreConfig.model_validate({"path": "x.sqlite"})
    assert config.location() == Path("x.sqlite")
    with_url = StoreConfig.model_validate({"url": "postgresql://u@db/s"})
    assert with_url.location() == "postgresql://u@db/s"
    monkeypatch.setenv("TUNESERVE_STORE_URL", "postgresql://u:p@other/s")
    assert config.location() == with_url.location() == "postgresql://u:p@other/s"
    monkeypatch.setenv("TUNESERVE_STORE_URL", "mysql://u:p@db/s")
    with pytest.raises(ConfigError, match=r"\$TUNESERVE_STORE_URL must be a postgresql:// URL"):
        config.location()
    with pytest.raises(ValueError, match=r"store.url must be a postgresql:// URL .* got mysql://"):
        StoreConfig.model_validate({"url": "mysql://u:p@db/s"})
