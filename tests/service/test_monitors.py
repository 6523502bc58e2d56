"""The background store checks read only what is new, and agree with a full read of the store.

Tests taking ``new_store`` run on SQLite and on PostgreSQL (see test_store.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.guardrails import accuracy_trips
from service.monitors import SETTLE_S, AccuracyMonitor, TrafficMonitor
from service.stats import path_end
from service.store import Store

NewStore = Callable[[], Path | str]
T0 = 1_800_000_000.0  # a fixed clock: the monitors are given ``now``


def _prediction(pid: str, ts: float, variant: str, **extra: Any) -> dict[str, Any]:
    return {"id": pid, "ts": ts, "variant": variant, "model_version": "m@1", "unit": "user",
            "unit_hash": "h", "forced": 0, "label": "positive", "score": 0.9,
            "latency_ms": 5.0, "salt": "s"} | extra  # fmt: skip


def _feedback(store: Store, pid: str, ts: float, correct: bool) -> None:
    """Feedback stamped at ``ts`` (the store stamps real feedback with its own clock)."""
    with store._lock:
        store.conn.execute(
            "INSERT INTO feedback (prediction_id, ts, label) VALUES (?, ?, ?)",
            (pid, ts, "positive" if correct else "negative"),
        )


def _full_path(store: Store, control: str, challenger: str, tau: float) -> tuple[Any, float]:
    """Counts and always-valid p-value from every labelled prediction (what the report does)."""
    outcomes = [(v, ok) for v, _, ok, _ in store.labelled(salt="s")]
    return path_end(outcomes, control, challenger, tau)


def test_the_accuracy_monitor_follows_the_full_path_reading_only_new_rows(
    new_store: NewStore,
) -> None:
    store = Store(new_store())
    monitor = AccuracyMonitor("baseline", alpha=0.01, tau=0.05, resync_s=1e9)
    rng = random.Random(7)
    clock, n, horizon = T0, 0, -1.0
    feedback_ts: list[float] = []
    for _ in range(8):  # eight checks, 60 new labelled predictions before each
        rows = []
        for _ in range(60):
            n += 1
            variant = "baseline" if n % 2 else "tuned"
            clock += rng.uniform(0.5, 4.0)
            rows.append(_prediction(f"p{n}", clock, variant))
        store.log_predictions(rows)
        for row in rows:  # feedback a little later, not always in the order answered
            accuracy = 0.9 if row["variant"] == "baseline" else 0.7
            feedback_ts.append(row["ts"] + rng.uniform(0, 30))
            _feedback(store, row["id"], feedback_ts[-1], rng.random() < accuracy)
        trips = monitor.check(store, "s", {"tuned": 0.0}, now=clock)
        assert monitor.rows_read == sum(ts > horizon for ts in feedback_ts)
        horizon = clock - SETTLE_S
        expected = accuracy_trips(
            [(v, ok) for v, _, ok, _ in store.labelled(salt="s")], "baseline", ["tuned"], 0.01, 0.05
        )  # the decision uses the unsettled rows too: the same as a full read
        assert [(t.variant, t.detail) for t in trips] == [(t.variant, t.detail) for t in expected]
    assert monitor.rows_read < 120 < n  # the last check read the last round and a few more
    # once everything settles, the kept path is the full path, and a check reads nothing
    monitor.check(store, "s", {"tuned": 0.0}, now=clock + 2 * SETTLE_S)
    assert (monitor._paths["tuned"].counts, monitor._paths["tuned"].p_value) == _full_path(
        store, "baseline", "tuned", 0.05
    )
    monitor.check(store, "s", {"tuned": 0.0}, now=clock + 3 * SETTLE_S)
    assert monitor.rows_read == 0
    assert expected and expected[0].kind == "accuracy"  # 0.7 against 0.9 trips in the end


def test_the_accuracy_monitor_counts_late_rows_within_the_settling_time(
    new_store: NewStore,
) -> None:
    store = Store(new_store())
    monitor = AccuracyMonitor("baseline", alpha=0.01, tau=0.05)
    _feedback(store, "early", T0, True)  # feedback stored before its prediction row
    monitor.check(store, "s", {"tuned": 0.0}, now=T0 + 1)
    store.log_predictions([_prediction("early", T0 - 1, "tuned")])
    monitor.check(store, "s", {"tuned": 0.0}, now=T0 + 2)
    _feedback(store, "late", T0 + 1, False)
    store.log_predictions([_prediction("late", T0, "baseline")])
    monitor.check(store, "s", {"tuned": 0.0}, now=T0 + SETTLE_S + 10)
    assert monitor._paths["tuned"].counts == (0, 1, 1, 1)
    # a row landing after its feedback has settled is left out (the report still counts it)
    _feedback(store, "lost", T0 + 5, True)
    store.log_predictions([_prediction("lost", T0 + 4, "tuned")])
    monitor.check(store, "s", {"tuned": 0.0}, now=T0 + SETTLE_S + 20)
    assert monitor._paths["tuned"].counts == (0, 1, 1, 1) and len(store.labelled()) == 3


def test_the_accuracy_monitor_starts_afresh_when_a_challenger_is_put_back(
    new_store: NewStore,
) -> None:
    store = Store(new_store())
    monitor = AccuracyMonitor("baseline", alpha=0.01, tau=0.05)
    store.log_predictions([_prediction(f"a{i}", T0 + i, "tuned") for i in range(10)])
    store.log_predictions([_prediction(f"b{i}", T0 + 20 + i, "tuned") for i in range(5)])
    for i in range(10):
        _feedback(store, f"a{i}", T0 + 40 + i, False)
    for i in range(5):
        _feedback(store, f"b{i}", T0 + 60 + i, True)
    monitor.check(store, "s", {"tuned": 0.0}, now=T0 + 500)
    assert monitor._paths["tuned"].counts == (0, 0, 5, 15)
    monitor.check(store, "s", {"tuned": T0 + 20}, now=T0 + 500)  # put back at T0 + 20
    assert monitor._paths["tuned"].counts == (0, 0, 5, 5)
    monitor.check(store, "other-salt", {"tuned": T0 + 20}, now=T0 + 500)  # a new experiment
    assert monitor._paths["tuned"].counts == (0, 0, 0, 0)


def _traffic(store: Store, since: float, after: float = -1.0, salt: str = "s") -> dict[str, int]:
    """The split counted by one query over everything (what the monitor must agree with)."""
    rows = store.conn.execute(
        "SELECT variant, COUNT(*) FROM predictions WHERE ts >= ? AND ts > ? "
        "AND unit IN ('user', 'request') AND (salt = ? OR salt IS NULL) GROUP BY variant",
        (since, after, salt),
    ).fetchall()
    return {str(v): int(n) for v, n in rows}


def test_the_traffic_monitor_agrees_with_a_full_count_and_reads_only_new_rows(
    new_store: NewStore,
) -> None:
    store = Store(new_store())
    monitor = TrafficMonitor(resync_s=1e9)
    rng = random.Random(3)
    clock, n, horizon = T0, 0, -1.0
    kinds = [{}, {}, {}, {"unit": "request"}, {"unit": "forced", "forced": 1},
             {"unit": "excluded"}, {"salt": "old"}, {"salt": None}]  # fmt: skip
    for step in range(6):
        rows = []
        for _ in range(50):
            n += 1
            clock += rng.uniform(0.5, 3.0)
            variant = rng.choice(["baseline", "tuned"])
            rows.append(_prediction(f"p{n}", clock - rng.uniform(0, 20), variant,
                                    **rng.choice(kinds)))  # fmt: skip
        store.log_predictions(rows)
        since = T0 + 100 if step >= 3 else T0  # the split changed at T0 + 100
        if step == 3:
            horizon = -1.0  # a new split is counted from its start
        assert monitor.counts(store, "s", since, now=clock) == _traffic(store, since)
        assert monitor.rows_counted == sum(_traffic(store, since, after=horizon).values())
        horizon = clock - SETTLE_S
    assert monitor.rows_counted < sum(_traffic(store, T0).values()) / 2  # a fraction of the store
    other = monitor.counts(store, "other", T0 + 100, now=clock)  # a new experiment: its rows
    assert other == _traffic(store, T0 + 100, salt="other") and other  # (and those without salt)
    later = clock + 2 * SETTLE_S
    assert monitor.counts(store, "s", T0 + 100, now=later) == _traffic(store, T0 + 100)
    monitor.counts(store, "s", T0 + 100, now=later + SETTLE_S)
    assert monitor.rows_counted == 0


def test_a_full_read_every_resync_takes_in_what_landed_too_late_and_follows_a_clock_step(
    new_store: NewStore,
) -> None:
    store = Store(new_store())
    accuracy = AccuracyMonitor("baseline", alpha=0.01, tau=0.05, resync_s=600)
    traffic = TrafficMonitor(resync_s=600)
    store.log_predictions([_prediction("a", T0, "tuned"), _prediction("b", T0, "baseline")])
    _feedback(store, "a", T0 + 1, True)
    _feedback(store, "b", T0 + 1, True)
    assert traffic.counts(store, "s", 0.0, now=T0 + 100) == {"tuned": 1, "baseline": 1}
    accuracy.check(store, "s", {"tuned": 0.0}, now=T0 + 100)
    assert accuracy._paths["tuned"].counts == (1, 1, 1, 1)
    # a replica whose clock lags by five minutes logs a prediction and its feedback
    store.log_predictions([_prediction("lag", T0 + 200 - 300, "tuned")])
    _feedback(store, "lag", T0 + 201 - 300, False)
    assert traffic.counts(store, "s", 0.0, now=T0 + 300) == {"tuned": 1, "baseline": 1}
    accuracy.check(store, "s", {"tuned": 0.0}, now=T0 + 300)
    assert accuracy._paths["tuned"].counts == (1, 1, 1, 1)  # missed for now
    assert traffic.counts(store, "s", 0.0, now=T0 + 700) == {"tuned": 2, "baseline": 1}
    accuracy.check(store, "s", {"tuned": 0.0}, now=T0 + 700)  # the resync reads everything
    assert accuracy._paths["tuned"].counts == (1, 1, 1, 2) and accuracy.rows_read == 3
    accuracy.check(store, "s", {"tuned": 0.0}, now=T0 + 710)
    assert accuracy.rows_read == 0
    # this worker's clock steps back: the cursor would skip rows stamped meanwhile
    store.log_predictions([_prediction("back", T0 + 400, "baseline")])
    _feedback(store, "back", T0 + 401, False)
    assert traffic.counts(store, "s", 0.0, now=T0 + 500) == {"tuned": 2, "baseline": 2}
    accuracy.check(store, "s", {"tuned": 0.0}, now=T0 + 500)
    assert accuracy._paths["tuned"].counts == (1, 2, 1, 2) and accuracy.rows_read == 4
