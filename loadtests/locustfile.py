"""Traffic for tuneserve: dataset sentences (real lengths), sticky user ids, one row per variant.

Configured by environment variables (`tuneserve loadtest` and the benchmarks set them):
  TUNESERVE_LOAD_TEXTS     JSON list of sentences or of [sentence, label] pairs, or a TSV/JSONL
                           split with a header (sentence/text and label columns; default: SST-2
                           test)
  TUNESERVE_LOAD_PATH      endpoint to call (default /predict)
  TUNESERVE_LOAD_MODE      closed (default: each user sends, waits for the answer, waits
                           wait_time) or open (one scheduler sends at fixed intended times)
  TUNESERVE_LOAD_RATE      closed loop: requests per second per user, 0 = no wait (default 0);
                           open loop: total arrivals per second
  TUNESERVE_LOAD_ARRIVALS  poisson (default: exponential gaps) or fixed/constant (even pacing)
  TUNESERVE_LOAD_DURATION_S  open loop: how long the schedule runs (default 30)
  TUNESERVE_LOAD_MAX_OUTSTANDING  open loop: requests in flight at most; an arrival beyond it is
                           dropped and recorded as such (default 256)
  TUNESERVE_LOAD_SEED      seed of the arrival schedule and text draws (default 0)
  TUNESERVE_LOAD_WARMUP_S  Locust's own statistics are reset after this many seconds (default 0)
  TUNESERVE_LOAD_FEEDBACK  probability of posting the true label to /feedback (default 0)
  TUNESERVE_LOAD_FEEDBACK_DELAY_S  seconds between the answer and its feedback (default 0)
  TUNESERVE_LOAD_LABEL_NAMES  JSON map from dataset label to the model's label name (default:
                           label i is the i-th entry of the first variant's labels in GET /models)
  TUNESERVE_LOAD_SHAPE     step or spike (a load shape that ends by itself), with its parameters
                           as JSON in TUNESERVE_LOAD_SHAPE_PARAMS (see loadtests/shapes.py)
  TUNESERVE_LOAD_RAW       where to write the raw per-request rows as JSON (default: not written)
  TUNESERVE_LOAD_USERS     distinct user ids to draw from (default 10000)

Each request is named after the X-Model-Variant header of its answer, so every variant gets its
own latency row. Raw rows (time, latency in ms, status, variant, kind, lateness in ms) let
percentiles be computed exactly: Locust rounds stored latencies to about two significant digits.
In open-loop mode the time is the intended send time and latency is measured from it, so a
stalled server shows up in the latency instead of slowing the senders down (coordinated
omission); Locust's own statistics get the same latencies.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool
from locust import (
    FastHttpUser,
    LoadTestShape,
    constant,
    constant_throughput,
    events,
    poisson,
    task,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.shapes import make_tick

log = logging.getLogger("tuneserve.locustfile")
SST2_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "test.tsv"


def load_rows(source: str) -> list[tuple[str, Any]]:
    """(sentence, label or None) from a JSON list, a TSV with a header, or JSONL."""
    path = Path(source)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        items = json.loads(raw)
        return [(str(i[0]), i[1]) if isinstance(i, list) else (str(i), None) for i in items]
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in raw.splitlines() if line.strip()]
        return [(str(r["text"]), r.get("label")) for r in records]
    lines = raw.splitlines()
    header = lines[0].split("\t")
    label_col = header.index("label") if "label" in header else None
    rows = []
    for line in lines[1:]:
        if line.strip():
            cells = line.split("\t")
            rows.append((cells[0], cells[label_col] if label_col is not None else None))
    return rows


def load_texts(source: str) -> list[str]:
    """Sentences only (kept for scripts that want just the texts)."""
    return [text for text, _ in load_rows(source)]


ENV = os.environ.get
ROWS_IN = load_rows(ENV("TUNESERVE_LOAD_TEXTS", str(SST2_TEST)))
PATH = ENV("TUNESERVE_LOAD_PATH", "/predict")
MODE = ENV("TUNESERVE_LOAD_MODE", "closed")
RATE = float(ENV("TUNESERVE_LOAD_RATE", "0"))
ARRIVALS = ENV("TUNESERVE_LOAD_ARRIVALS", "poisson")
DURATION_S = float(ENV("TUNESERVE_LOAD_DURATION_S", "30"))
MAX_OUTSTANDING = int(ENV("TUNESERVE_LOAD_MAX_OUTSTANDING", "256"))
SEED = int(ENV("TUNESERVE_LOAD_SEED", "0"))
WARMUP_S = float(ENV("TUNESERVE_LOAD_WARMUP_S", "0"))
FEEDBACK = float(ENV("TUNESERVE_LOAD_FEEDBACK", "0"))
FEEDBACK_DELAY_S = float(ENV("TUNESERVE_LOAD_FEEDBACK_DELAY_S", "0"))
LABEL_NAMES: dict[str, str] = json.loads(ENV("TUNESERVE_LOAD_LABEL_NAMES", "{}"))
SHAPE = ENV("TUNESERVE_LOAD_SHAPE", "")
SHAPE_PARAMS = json.loads(ENV("TUNESERVE_LOAD_SHAPE_PARAMS", "{}"))
RAW = ENV("TUNESERVE_LOAD_RAW")
USERS = int(ENV("TUNESERVE_LOAD_USERS", "10000"))

ROWS: list[tuple[float, float, int, str, str, float]] = []
META: dict[str, Any] = {"mode": MODE, "started_at": None, "rate": RATE, "arrivals": ARRIVALS}
RNG = random.Random(SEED)


def label_name(label: Any) -> str | None:
    """The model's name for a dataset label (``1`` -> ``positive``), or None when unknown."""
    if label is None:
        return None
    return LABEL_NAMES.get(str(label), str(label))


def arrival_offsets(rate: float, duration_s: float, arrivals: str, seed: int) -> list[float]:
    """Intended send times (seconds from the start) of an open-loop schedule."""
    if rate <= 0:
        return []
    if arrivals in ("fixed", "constant"):
        return [i / rate for i in range(int(rate * duration_s))]
    rng, t = random.Random(seed), 0.0
    out: list[float] = []
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append(t)


class TrafficMixin:
    """Posting a prediction (named per variant) and, sometimes, its true label later."""

    client: Any

    def send_predict(self, user_id: str, intended: float | None = None) -> None:
        text, label = RNG.choice(ROWS_IN)
        started = time.time()
        t0 = started if intended is None else intended
        late_ms = 0.0 if intended is None else (started - intended) * 1000
        body = {"text": text, "user_id": user_id}
        with self.client.post(PATH, json=body, name=PATH, catch_response=True) as response:
            variant = (response.headers.get("X-Model-Variant") if response.headers else None) or "-"
            latency_ms = (time.time() - t0) * 1000
            status = response.status_code or 0
            ROWS.append((t0, latency_ms, status, variant, "predict", late_ms))
            if variant != "-":
                response.request_meta["name"] = f"{PATH} [{variant}]"
            if intended is not None:  # Locust's statistics get the latency from the intended time
                response.request_meta["response_time"] = latency_ms
            if status != 200:
                response.failure(f"HTTP {status}")
                return
            answer = response.json()
        name = label_name(label)
        if name is not None and FEEDBACK > 0 and RNG.random() < FEEDBACK:
            gevent.spawn_later(FEEDBACK_DELAY_S, self.send_feedback, answer, name)

    def send_feedback(self, answer: dict[str, Any], label: str) -> None:
        body = {"prediction_id": answer.get("prediction_id"), "label": label}
        started = time.time()
        with self.client.post("/feedback", json=body, catch_response=True) as response:
            status = response.status_code or 0
            ROWS.append((started, (time.time() - started) * 1000, status,
                         str(answer.get("variant", "-")), "feedback", 0.0))  # fmt: skip
            if status != 200:
                response.failure(f"HTTP {status}")


class PredictUser(TrafficMixin, FastHttpUser):
    """Closed loop: one client with a sticky user id, sentences drawn at random."""

    abstract = MODE == "open"
    if RATE <= 0:
        wait_time = constant(0)
    elif ARRIVALS in ("constant", "fixed"):
        wait_time = constant_throughput(RATE)
    else:
        wait_time = poisson(RATE)

    def on_start(self) -> None:
        self.user_id = f"user-{RNG.randrange(USERS)}"

    @task
    def predict(self) -> None:
        self.send_predict(self.user_id)


class OpenLoopUser(TrafficMixin, FastHttpUser):
    """Open loop: sends at precomputed intended times, whatever the server does meanwhile."""

    abstract = MODE != "open"
    fixed_count = 1
    concurrency = MAX_OUTSTANDING
    wait_time = constant(0)

    @task
    def run_schedule(self) -> None:
        offsets = arrival_offsets(RATE, DURATION_S, ARRIVALS, SEED)
        start = time.time() + 0.05
        META["started_at"] = start
        pool, outstanding = Pool(MAX_OUTSTANDING), set()

        def send(intended: float) -> None:
            self.send_predict(f"user-{RNG.randrange(USERS)}", intended)
            outstanding.discard(intended)

        for offset in offsets:
            intended = start + offset
            delay = intended - time.time()
            if delay > 0:
                gevent.sleep(delay)
            if pool.full():
                late_ms = (time.time() - intended) * 1000
                ROWS.append((intended, 0.0, 0, "-", "dropped", late_ms))
                continue
            outstanding.add(intended)
            pool.spawn(send, intended)
        pool.join(timeout=10)
        now = time.time()
        for intended in sorted(outstanding):  # never answered within 10 s of the last send
            ROWS.append((intended, (now - intended) * 1000, 0, "-", "predict", 0.0))
        pool.kill()
        gevent.spawn(self.environment.runner.quit)
        gevent.sleep(60)


class StepShape(LoadTestShape):
    """More users every step until the maximum; stops at the end of the duration."""

    abstract = SHAPE != "step"

    def tick(self) -> tuple[int, float] | None:
        return make_tick("step", SHAPE_PARAMS)(self.get_run_time())


class SpikeShape(LoadTestShape):
    """A base load with a burst of users in the middle; stops at the end of the duration."""

    abstract = SHAPE != "spike"

    def tick(self) -> tuple[int, float] | None:
        return make_tick("spike", SHAPE_PARAMS)(self.get_run_time())


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    global LABEL_NAMES
    if MODE != "open":
        META["started_at"] = time.time()
    if WARMUP_S > 0:
        gevent.spawn_later(WARMUP_S, environment.stats.reset_all)
    if FEEDBACK > 0 and not LABEL_NAMES and environment.host:
        LABEL_NAMES = fetch_label_names(environment.host)


def fetch_label_names(host: str) -> dict[str, str]:
    """Label i is the i-th label of the first variant in GET /models (its label map order)."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/models", timeout=10) as response:
            labels = json.load(response)["variants"][0]["labels"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        log.warning("GET /models gave no label map (%s): feedback uses dataset labels as-is", exc)
        return {}
    return {str(i): str(name) for i, name in enumerate(labels)}


@events.quitting.add_listener
def _write_raw(environment: Any, **_: Any) -> None:
    if RAW:
        META["label_names"] = LABEL_NAMES
        Path(RAW).write_text(json.dumps({"meta": META, "rows": ROWS}))
