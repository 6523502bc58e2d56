"""Traffic for tuneserve: dataset texts (real lengths), sticky user ids, one row per variant.

Configured by one environment variable, TUNESERVE_LOAD_CONFIG: the path of a JSON file that
`tuneserve loadtest` writes into each run folder (``locust_settings.json``) and that this file
validates with the same models (loadtests/config.py ``LocustSettings``: the run's
``LoadTestConfig``, the traffic file of [text, label] pairs, where the results go). Closed loop
(``open_loop = false``): each user sends, waits for the answer, waits by ``rate``; open loop: one
scheduler per process sends at fixed intended times. ``shape`` step or spike: a load shape that
ends by itself (loadtests/shapes.py). ``label_names`` empty: label i is the i-th entry of the
first variant's labels in GET /models.

Each request is named after the X-Model-Variant header of its answer, so every variant gets its
own Locust row. Latencies go into HDR histograms (loadtests/histograms.py), not into a list:
memory stays flat however long the run. Alone, this process records and writes the results
itself. In a distributed run (Locust's master and workers: --processes N, or --master and
--worker on several machines) the master sends each worker its index, the worker count and the
master's config; each worker offers its share of the open-loop schedule (loadtests/schedule.py),
draws from its own seed, and sends its histograms to the master every REPORT_EVERY_S seconds
and once more at its end; the master merges them and writes the results. In open-loop mode the
time is the intended send time and latency is measured from it, so a stalled server shows up in
the latency instead of slowing the senders down (coordinated omission); Locust's own
statistics get the same latencies.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool
from locust import FastHttpUser, LoadTestShape, constant_throughput, events, poisson, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.cluster import FLUSH, PLAN, STATS, Run
from loadtests.config import SETTINGS_ENV, LocustSettings
from loadtests.schedule import worker_offsets
from loadtests.shapes import default_params, make_tick
from tuneserve.config import validate_config

log = logging.getLogger("tuneserve.locustfile")
REPORT_EVERY_S = 2.0  # a worker sends its histograms this often
FLUSH_WAIT_S = 15.0  # at the end, the master waits this long for every worker's last report
GRACE_S = 2.0  # with workers, shapes (and the closed loop's run time) outlast the measured
# interval: a worker starts its clock a little after the master


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
ROWS_IN: list[tuple[str, Any]] = [
    (str(item[0]), item[1]) if isinstance(item, list) else (str(item), None)
    for item in json.loads(SETTINGS.traffic.read_text(encoding="utf-8"))
]
_CFG = SETTINGS.config
SHAPE = _CFG.shape if not _CFG.open_loop and _CFG.shape != "constant" else ""
_TOTAL_S = _CFG.warmup_s + _CFG.duration_s
SHAPE_PARAMS = default_params(SHAPE, _CFG.users, _CFG.spawn_rate, _TOTAL_S) if SHAPE else {}


def shape_tick(run_time_s: float, grace_s: float) -> tuple[int, float] | None:
    """The shape's users, its last step held for ``grace_s`` after the end, then None."""
    if run_time_s >= _TOTAL_S + grace_s:
        return None
    return make_tick(SHAPE, SHAPE_PARAMS)(min(run_time_s, _TOTAL_S - 1e-3))


RUN = Run(_CFG, SETTINGS.raw)
HEADERS = _CFG.key_headers()  # the API key, when the service requires one (never logged)


def label_name(label: Any) -> str | None:
    """The model's name for a dataset label (``1`` -> ``positive``), or None when unknown."""
    if label is None:
        return None
    return RUN.label_names.get(str(label), str(label))


class TrafficMixin:
    """Posting a prediction (named per variant) and, sometimes, its true label later."""

    client: Any

    def send_predict(self, user_id: str, intended: float | None = None) -> None:
        text, label = RUN.rng.choice(ROWS_IN)
        path = RUN.cfg.path
        started = time.time()
        t0 = started if intended is None else intended
        late_ms = 0.0 if intended is None else (started - intended) * 1000
        body = {"text": text, "user_id": user_id}
        with self.client.post(
            path, json=body, name=path, headers=HEADERS, catch_response=True
        ) as response:
            variant = (response.headers.get("X-Model-Variant") if response.headers else None) or "-"
            latency_ms = (time.time() - t0) * 1000
            status = response.status_code or 0
            RUN.record(t0, latency_ms, status, variant, "predict", late_ms)
            if variant != "-":
                response.request_meta["name"] = f"{path} [{variant}]"
            if intended is not None:  # Locust's statistics get the latency from the intended time
                response.request_meta["response_time"] = latency_ms
            if status != 200:
                response.failure(f"HTTP {status}")
                return
            answer = response.json()
        name = label_name(label)
        if name is not None and RUN.cfg.feedback > 0 and RUN.rng.random() < RUN.cfg.feedback:
            gevent.spawn_later(RUN.cfg.feedback_delay_s, self.send_feedback, answer, name)

    def send_feedback(self, answer: dict[str, Any], label: str) -> None:
        body = {"prediction_id": answer.get("prediction_id"), "label": label}
        started = time.time()
        with self.client.post(
            "/feedback", json=body, headers=HEADERS, catch_response=True
        ) as response:
            status = response.status_code or 0
            RUN.record(started, (time.time() - started) * 1000, status,
                       str(answer.get("variant", "-")), "feedback", 0.0)  # fmt: skip
            if status != 200:
                response.failure(f"HTTP {status}")


class PredictUser(TrafficMixin, FastHttpUser):
    """Closed loop: one client with a sticky user id, sentences drawn at random."""

    def on_start(self) -> None:
        self.user_id = f"user-{RUN.rng.randrange(RUN.cfg.distinct_users)}"
        cfg = RUN.cfg
        if cfg.rate <= 0:
            self._wait = None
        elif cfg.arrivals in ("constant", "fixed"):
            self._wait = constant_throughput(cfg.rate)
        else:
            self._wait = poisson(cfg.rate)

    def wait_time(self) -> float:
        return self._wait(self) if self._wait else 0.0

    @task
    def predict(self) -> None:
        self.send_predict(self.user_id)


class OpenLoopUser(TrafficMixin, FastHttpUser):
    """Open loop: sends this process's share of the schedule at its intended times, whatever
    the server does meanwhile. One per process (the runner starts as many as processes)."""

    concurrency = _CFG.max_outstanding

    def wait_time(self) -> float:
        return 0.0

    @task
    def run_schedule(self) -> None:
        if RUN.schedule_started:
            log.error("a second open-loop user in one process: it sends nothing (start one per "
                      "worker process: -u equal to the number of workers)")  # fmt: skip
            raise StopUser()
        RUN.schedule_started = True
        cfg = RUN.cfg
        offsets = worker_offsets(cfg.rate, RUN.total_s, cfg.arrivals, cfg.seed, RUN.index,
                                 RUN.count)  # fmt: skip
        start = time.time() + 0.05
        RUN.started_at = start
        pool, outstanding = Pool(cfg.max_outstanding), set()

        def send(intended: float) -> None:
            self.send_predict(f"user-{RUN.rng.randrange(cfg.distinct_users)}", intended)
            outstanding.discard(intended)

        for offset in offsets:
            intended = start + offset
            delay = intended - time.time()
            if delay > 0:
                gevent.sleep(delay)
            if pool.full():
                RUN.record(intended, 0.0, 0, "-", "dropped", (time.time() - intended) * 1000)
                continue
            outstanding.add(intended)
            pool.spawn(send, intended)
        pool.join(timeout=10)
        now = time.time()
        for intended in sorted(outstanding):  # never answered within 10 s of the last send
            RUN.record(intended, (now - intended) * 1000, 0, "-", "predict", 0.0)
        pool.kill()
        runner = self.environment.runner
        if isinstance(runner, WorkerRunner):
            send_report(runner, final=True)  # the master quits once every worker is done
        else:
            gevent.spawn(runner.quit)
        raise StopUser()


def _grace_s(runner: Any) -> float:
    return GRACE_S if isinstance(runner, MasterRunner) else 0.0


class StepShape(LoadTestShape):
    """More users every step until the maximum; stops at the end of the duration."""

    abstract = SHAPE != "step"

    def tick(self) -> tuple[int, float] | None:
        return shape_tick(self.get_run_time(), _grace_s(self.runner))


class SpikeShape(LoadTestShape):
    """A base load with a burst of users in the middle; stops at the end of the duration."""

    abstract = SHAPE != "spike"

    def tick(self) -> tuple[int, float] | None:
        return shape_tick(self.get_run_time(), _grace_s(self.runner))


def send_report(runner: Any, final: bool = False) -> None:
    """A worker's histograms since its last report (and whether it is its last) to the master."""
    if not RUN.final:
        runner.send_message(STATS, RUN.report(final))


def _report_every(runner: Any) -> None:
    while not RUN.final:
        gevent.sleep(REPORT_EVERY_S)
        send_report(runner)


def _on_plan(environment: Any, msg: Any, **_: Any) -> None:
    """Worker: the master's config, this worker's index and the worker count."""
    RUN.follow(msg.data)


def _on_stats(environment: Any, msg: Any, **_: Any) -> None:
    """Master: merge a worker's report; in open loop, quit once every worker is done."""
    RUN.merge_report(msg.data)
    if RUN.cfg.open_loop and RUN.all_finished:
        gevent.spawn(environment.runner.quit)


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(STATS, _on_stats)
    elif isinstance(runner, WorkerRunner):
        runner.register_message(PLAN, _on_plan)
        runner.register_message(FLUSH, lambda environment, msg, **_: send_report(runner, True))


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        for client_id, plan in RUN.plans([client.id for client in runner.clients.all]):
            runner.send_message(PLAN, plan, client_id)
    else:
        if not RUN.cfg.open_loop:
            RUN.started_at = time.time()
        if isinstance(runner, WorkerRunner):
            gevent.spawn(_report_every, runner)
    if RUN.cfg.warmup_s > 0 and not isinstance(runner, WorkerRunner):
        gevent.spawn_later(RUN.cfg.warmup_s, environment.stats.reset_all)
    if RUN.cfg.feedback > 0 and not RUN.label_names and environment.host:
        RUN.label_names = fetch_label_names(environment.host)


@events.test_stopping.add_listener
def _on_test_stopping(environment: Any, **_: Any) -> None:
    """Master: ask every worker for its last report and wait for them (FLUSH_WAIT_S at most)."""
    runner = environment.runner
    if not isinstance(runner, MasterRunner) or RUN.all_finished:
        return
    for client in runner.clients.all:
        runner.send_message(FLUSH, None, client.id)
    deadline = time.time() + FLUSH_WAIT_S
    while not RUN.all_finished and time.time() < deadline:
        gevent.sleep(0.05)
    if not RUN.all_finished:
        log.warning("%d of %d workers sent no last report within %.0f s: their last %.0f s are "
                    "missing", RUN.count - len(RUN.finals), RUN.count, FLUSH_WAIT_S,
                    REPORT_EVERY_S)  # fmt: skip


def fetch_label_names(host: str) -> dict[str, str]:
    """Label i is the i-th label of the first variant in GET /models (its label map order)."""
    try:
        request = urllib.request.Request(f"{host.rstrip('/')}/models", headers=HEADERS)
        with urllib.request.urlopen(request, timeout=10) as response:
            labels = json.load(response)["variants"][0]["labels"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        log.warning("GET /models gave no label map (%s): feedback uses dataset labels as-is", exc)
        return {}
    return {str(i): str(name) for i, name in enumerate(labels)}


@events.quitting.add_listener
def _write_results(environment: Any, **_: Any) -> None:
    """The merged histograms and counts (master, or the one process); a worker writes none."""
    RUN.close_raw()
    if isinstance(environment.runner, WorkerRunner):
        return
    data = RUN.results(distributed=isinstance(environment.runner, MasterRunner))
    SETTINGS.results.write_text(json.dumps(data), encoding="utf-8")
