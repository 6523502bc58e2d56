"""Traffic for tuneserve: SST-2 sentences (real lengths), sticky user ids, one row per variant.

Configured by environment variables (the runner and benchmarks set them):
  TUNESERVE_LOAD_TEXTS   JSON list of sentences, or a TSV/JSONL split (default: SST-2 test)
  TUNESERVE_LOAD_PATH    endpoint to call (default /predict)
  TUNESERVE_LOAD_RATE    requests per second per user; 0 = closed loop (default 0)
  TUNESERVE_LOAD_ARRIVALS  poisson (default: random gaps, so users do not fire in step) or
                         constant (fixed pacing)
  TUNESERVE_LOAD_RAW     where to write raw per-request rows as JSON (default: not written)
  TUNESERVE_LOAD_USERS   distinct user ids to draw from (default 10000)

Each request is named after the X-Model-Variant header of its answer, so every variant gets its
own latency row. Raw rows (start time, latency in ms, status, variant) let percentiles be computed
exactly: Locust rounds stored latencies to about two significant digits.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, constant_throughput, events, poisson, task

SST2_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "test.tsv"


def load_texts(source: str) -> list[str]:
    """Sentences from a JSON list, a TSV with a header (first column) or JSONL (``text``)."""
    path = Path(source)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return [str(t) for t in json.loads(raw)]
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    return [line.split("\t")[0] for line in raw.splitlines()[1:] if line.strip()]


TEXTS = load_texts(os.environ.get("TUNESERVE_LOAD_TEXTS", str(SST2_TEST)))
PATH = os.environ.get("TUNESERVE_LOAD_PATH", "/predict")
RATE = float(os.environ.get("TUNESERVE_LOAD_RATE", "0"))
ARRIVALS = os.environ.get("TUNESERVE_LOAD_ARRIVALS", "poisson")
RAW = os.environ.get("TUNESERVE_LOAD_RAW")
USERS = int(os.environ.get("TUNESERVE_LOAD_USERS", "10000"))
ROWS: list[tuple[float, float, int, str]] = []


class PredictUser(FastHttpUser):
    """One client: a sticky user id, sentences drawn at random."""

    if RATE <= 0:
        wait_time = constant(0)
    elif ARRIVALS == "constant":
        wait_time = constant_throughput(RATE)
    else:
        wait_time = poisson(RATE)

    def on_start(self) -> None:
        self.user_id = f"user-{random.randrange(USERS)}"

    @task
    def predict(self) -> None:
        body = {"text": random.choice(TEXTS), "user_id": self.user_id}
        started = time.time()
        with self.client.post(PATH, json=body, name=PATH, catch_response=True) as response:
            variant = response.headers.get("X-Model-Variant") if response.headers else None
            latency_ms = (time.time() - started) * 1000
            status = response.status_code or 0
            ROWS.append((started, latency_ms, status, variant or "-"))
            if variant:
                response.request_meta["name"] = f"{PATH} [{variant}]"
            if status != 200:
                response.failure(f"HTTP {status}")


@events.quitting.add_listener
def _write_raw(environment: Any, **_: Any) -> None:
    if RAW:
        Path(RAW).write_text(json.dumps(ROWS))
