"""The experiment store (SQLite, WAL) and the prediction log in front of it."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from service import metrics
from service.predlog import PredictionLog
from service.store import SCHEMA_VERSION, Store, unit_hash
from tuneserve.errors import ConfigError


def _row(i: int, variant: str = "tuned", label: str = "positive") -> dict[str, object]:
    return {"id": f"p{i}", "ts": time.time() + i, "variant": variant, "model_version": "m@1",
            "unit": "user", "unit_hash": unit_hash("s", f"u{i}"), "forced": 0, "label": label,
            "score": 0.9, "latency_ms": 5.0, "text": None}  # fmt: skip


def test_schema_is_versioned_and_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    store = Store(path)
    assert store.version() == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.log_predictions([_row(1)])
    store.close()
    again = Store(path)  # reopening keeps the data and applies nothing twice
    assert again.version() == SCHEMA_VERSION and again.count("predictions") == 1
    again.conn.execute("UPDATE schema_version SET version = 99")
    again.close()
    with pytest.raises(ConfigError, match="schema version 99, newer than"):
        Store(path)


def test_feedback_is_idempotent_and_joins_predictions_written_later(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.sqlite")
    assert store.add_feedback("p1", "positive").status == "stored"  # before its prediction row
    repeat = store.add_feedback("p1", "negative")
    assert (repeat.status, repeat.label) == ("duplicate", "positive")  # the first label wins
    assert store.labelled() == []
    store.log_predictions([_row(1), _row(2, label="negative"), _row(1)])  # p1 twice: kept once
    store.add_feedback("p2", "positive")
    assert store.count("predictions") == 2 and store.count("feedback") == 2
    assert [(v, ok) for v, _, ok, _ in store.labelled()] == [("tuned", True), ("tuned", False)]
    assert store.variant_of("p2") == "tuned" and store.variant_of("nope") is None
    store.record_change({"weights": {"tuned": 0.5}})
    assert store.history()[0][1] == {"weights": {"tuned": 0.5}}


def _post_feedback(path: str, worker: int, n: int) -> None:
    store = Store(Path(path))
    for i in range(n):
        store.add_feedback(f"w{worker}-{i}", "positive")
    store.close()


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    Store(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_post_feedback, args=(str(path), w, 150)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    assert Store(path).count("feedback") == 600


def test_prediction_log_flushes_on_close_and_counts_what_it_drops(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    log = PredictionLog(lambda: Store(path), max_queue=5)
    dropped_before = metrics.LOG_DROPPED.labels(kind="queue_full")._value.get()
    with log.store._lock:  # the writer is stuck behind a slow store: the queue fills up
        accepted = sum(log.submit(_row(i)) for i in range(50))
        time.sleep(0.2)
    log.close()
    dropped = metrics.LOG_DROPPED.labels(kind="queue_full")._value.get() - dropped_before
    assert accepted + dropped == 50 and dropped > 0
    assert Store(path).count("predictions") == accepted  # everything accepted was flushed


def test_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot open the experiment store"):
        Store(blocker / "x.sqlite")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="file is not a database"):
        Store(corrupt)
