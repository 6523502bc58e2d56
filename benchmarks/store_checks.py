"""Store-check benchmark: what a worker's background guardrail and sample-ratio check costs as the
experiment's store grows.

    .venv/bin/python benchmarks/store_checks.py --sizes 100000 1000000

For each size, a SQLite store is filled with that many logged predictions (two variants, one in
two labelled) stamped over the past at SERVE_RATE requests/s. Then, in one run:
- a full read: every labelled prediction and the traffic since the split changed, then the
  always-valid test on all of them. Every check did that before the incremental monitors; the
  report (GET /ab/report) still does;
- the monitors' first check after a worker starts (it reads everything once);
- their steady check: the next check, CHECK_PERIOD_S later, after that period's new traffic
  (SERVE_RATE requests/s, half labelled) has been logged;
- building the A/B report (GET /ab/report), which reads the whole experiment.
Each is timed ROUNDS times (median). Writes store_checks.json and store_checks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.config import ServingConfig  # noqa: E402
from service.guardrails import accuracy_trips  # noqa: E402
from service.monitors import AccuracyMonitor, TrafficMonitor  # noqa: E402
from service.report import build_report  # noqa: E402
from service.store import Store  # noqa: E402
from tuneserve.machine import describe_machine  # noqa: E402

SERVE_RATE = 300.0  # requests/s: what 2 CPU cores serve (BENCHMARKS.md)
CHECK_PERIOD_S = 10.0  # guardrails.check_interval_s (2 s) x STORE_CHECKS_EVERY (5)
ROUNDS = 3
CHUNK = 20_000


def fill(store: Store, n: int, end: float, rng: random.Random) -> None:
    """``n`` predictions stamped up to ``end`` at SERVE_RATE, every other one labelled."""
    start = end - n / SERVE_RATE
    for first in range(0, n, CHUNK):
        rows, feedback = [], []
        for i in range(first, min(n, first + CHUNK)):
            ts = start + i / SERVE_RATE
            variant = "baseline" if i % 2 else "tuned"
            rows.append({"id": f"p{end}-{i}", "ts": ts, "variant": variant, "model_version": "m",
                         "unit": "user", "unit_hash": "h", "forced": 0, "label": "positive",
                         "score": 0.9, "latency_ms": 5.0, "salt": "s"})  # fmt: skip
            if rng.random() < 0.5:
                good = rng.random() < (0.9 if variant == "baseline" else 0.88)
                feedback.append((rows[-1]["id"], ts + 1.0, "positive" if good else "negative"))
        store.log_predictions(rows)
        with store._lock:  # feedback stamped as it would have arrived, a second after
            store.conn.execute("BEGIN")
            store.conn.executemany(
                "INSERT INTO feedback (prediction_id, ts, label) VALUES (?, ?, ?)", feedback
            )
            store.conn.execute("COMMIT")


def full_read(store: Store) -> int:
    labelled = store.labelled(salt="s")
    accuracy_trips([(v, ok) for v, _, ok, _ in labelled], "baseline", ["tuned"], 0.01, 0.05)
    store.traffic_after(-1.0, time.time(), "s")  # one full count of the split
    return len(labelled)


def measure(size: int, work: Path) -> dict[str, Any]:
    rng = random.Random(size)
    store = Store(work / f"store-{size}.sqlite", durable=False)
    now = time.time()
    fill(store, size, now, rng)
    settings = ServingConfig.model_validate({  # the report reads only the store
        "variants": [{"name": "baseline", "path": str(work), "control": True},
                     {"name": "tuned", "path": str(work)}],
        "experiment": {"salt": "s"}, "store": {"path": str(store.path)},
    })  # fmt: skip
    full, first, steady, read, counted, report = [], [], [], [], [], []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        labelled = full_read(store)
        full.append(time.perf_counter() - started)

        accuracy, traffic = AccuracyMonitor("baseline", 0.01, 0.05), TrafficMonitor()
        started = time.perf_counter()
        accuracy.check(store, "s", {"tuned": 0.0}, now=now)
        traffic.counts(store, "s", 0.0, now=now)
        first.append(time.perf_counter() - started)

        now += CHECK_PERIOD_S
        fill(store, int(SERVE_RATE * CHECK_PERIOD_S), now, rng)
        started = time.perf_counter()
        accuracy.check(store, "s", {"tuned": 0.0}, now=now)
        traffic.counts(store, "s", 0.0, now=now)
        steady.append(time.perf_counter() - started)
        read.append(accuracy.rows_read)
        counted.append(traffic.rows_counted)

        started = time.perf_counter()
        build_report(store, settings)
        report.append(time.perf_counter() - started)
    store.close()
    return {
        "predictions": size,
        "labelled": labelled,
        "full_read_s": statistics.median(full),
        "first_check_s": statistics.median(first),
        "steady_check_s": statistics.median(steady),
        "steady_rows_read": int(statistics.median(read)),
        "steady_rows_counted": int(statistics.median(counted)),
        "full_over_steady": statistics.median(full) / statistics.median(steady),
        "report_s": statistics.median(report),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench-store")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for size in args.sizes:
            print(f"filling and timing a store of {size:,} predictions ...", flush=True)
            rows.append(measure(size, Path(tmp)))
    result = {
        "machine": describe_machine(),
        "command": " ".join(["benchmarks/store_checks.py", *sys.argv[1:]]),
        "serve_rate": SERVE_RATE,
        "check_period_s": CHECK_PERIOD_S,
        "rounds": ROUNDS,
        "rows": rows,
    }
    (args.out / "store_checks.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Store checks on SQLite ({result['machine']['cpu']}, {result['machine']['cores']} cores),"
        f" medians of {ROUNDS}; steady: {SERVE_RATE:.0f} req/s logged, half labelled, over the"
        f" {CHECK_PERIOD_S:.0f} s between checks",
        "",
        "| predictions | labelled | full read | first check | steady check | rows read (steady) "
        "| full / steady | report |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['predictions']:,} | {r['labelled']:,} | {r['full_read_s'] * 1e3:,.0f} ms "
            f"| {r['first_check_s'] * 1e3:,.0f} ms | {r['steady_check_s'] * 1e3:,.1f} ms "
            f"| {r['steady_rows_read']:,} + {r['steady_rows_counted']:,} counted "
            f"| {r['full_over_steady']:,.0f}x | {r['report_s'] * 1e3:,.0f} ms |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "store_checks.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
