"""Traffic for tuneserve: dataset texts (real lengths), sticky user ids, one row per variant.

Configured by one environment variable, TUNESERVE_LOAD_CONFIG: the path of a JSON file that
`tuneserve loadtest` writes into each run folder (``locust_settings.json``) and that this file
validates with the same models (loadtests/config.py ``LocustSettings``: the run's
``LoadTestConfig``, the traffic file of [text, label] pairs, where raw rows go). Closed loop
(``open_loop = false``): each user sends, waits for the answer, waits by ``rate``; open loop: one
scheduler sends at fixed intended times. ``shape`` step or spike: a load shape that ends by
itself (loadtests/shapes.py). ``label_names`` empty: label i is the i-th entry of the first
variant's labels in GET /models.

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
from loadtests.config import SETTINGS_ENV, LocustSettings
from loadtests.shapes import default_params, make_tick
from tuneserve.config import validate_config

log = logging.getLogger("tuneserve.locustfile")


def load_settings() -> LocustSettings:
    """The settings file named by $TUNESERVE_LOAD_CONFIG, validated."""
    source = os.environ.get(SETTINGS_ENV)
    if not source:
        sys.exit(
            f"error: {SETTINGS_ENV} is not set: run this locustfile through `tuneserve "
            "loadtest`, or point it at the locust_settings.json of a loadtest run folder"
        )
    return validate_config(LocustSettings, json.loads(Path(source).read_text(encoding="utf-8")),
                           source)  # fmt: skip


SETTINGS = load_settings()
CFG = SETTINGS.config
ROWS_IN: list[tuple[str, Any]] = [
    (str(item[0]), item[1]) if isinstance(item, list) else (str(item), None)
    for item in json.loads(SETTINGS.traffic.read_text(encoding="utf-8"))
]
PATH = CFG.path
MODE = "open" if CFG.open_loop else "closed"
RATE = CFG.rate
ARRIVALS = CFG.arrivals
DURATION_S = CFG.warmup_s + CFG.duration_s
MAX_OUTSTANDING = CFG.max_outstanding
SEED = CFG.seed
WARMUP_S = CFG.warmup_s
FEEDBACK = CFG.feedback
FEEDBACK_DELAY_S = CFG.feedback_delay_s
LABEL_NAMES: dict[str, str] = dict(CFG.label_names)
SHAPE = CFG.shape if MODE == "closed" and CFG.shape != "constant" else ""
SHAPE_PARAMS = default_params(SHAPE, CFG.users, CFG.spawn_rate, DURATION_S) if SHAPE else {}
RAW = SETTINGS.raw
USERS = CFG.distinct_users

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
