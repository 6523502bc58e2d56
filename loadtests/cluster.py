"""This process's part of a Locust run, alone or as master or worker: its config and index, its
draws, its recorder, and the reports a worker sends and its master merges (Locust's custom
messages PLAN, STATS and FLUSH; the locustfile wires them to Locust's events).

No Locust or gevent here: importing Locust monkey-patches the interpreter.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import IO, Any

from loadtests.config import LoadTestConfig
from loadtests.histograms import HIGHEST_US, LOWEST_US, SUMMARY_DIGITS, WINDOW_DIGITS, Recorder
from loadtests.schedule import worker_seed
from tuneserve.config import validate_config

PLAN = "tuneserve_plan"  # master -> each worker: its index, the worker count, the master's config
STATS = "tuneserve_stats"  # worker -> master: histograms since the last report; the last one
FLUSH = "tuneserve_flush"  # master -> workers at the end: send your last report now


class Run:
    """This process's part of the run: its config (the master's, on a worker), its index among
    the workers, its random draws, its recorder, and the raw dump if one was asked for."""

    def __init__(self, cfg: LoadTestConfig, raw: Path | None = None) -> None:
        self.adopt(cfg, 0, 1)
        self.raw_path = raw
        self.started_at: float | None = None
        self.final = False  # a worker's last report is sent: nothing more is recorded
        self.schedule_started = False
        self.raw: IO[str] | None = None
        self.recorder = Recorder()
        self.workers: dict[int, float | None] = {}  # master: worker index -> its start time
        self.finals: set[int] = set()  # master: workers whose last report came

    def adopt(self, cfg: LoadTestConfig, index: int, count: int) -> None:
        self.cfg, self.index, self.count = cfg, index, count
        self.rng = random.Random(worker_seed(cfg.seed, index))
        self.label_names: dict[str, str] = dict(cfg.label_names)

    @property
    def total_s(self) -> float:
        return self.cfg.warmup_s + self.cfg.duration_s

    def record(self, t0: float, latency_ms: float, status: int, variant: str, kind: str,
               late_ms: float) -> None:  # fmt: skip
        """One request sent at ``t0``: into the measured rows (after the warm-up, before the
        end), into its 1-second window, and into the raw dump if there is one."""
        if self.final or self.started_at is None:
            return
        since = t0 - self.started_at
        measured = self.cfg.warmup_s <= since < self.total_s
        second = int(since) if 0 <= since < self.total_s else None
        self.recorder.record(kind, variant, status, latency_ms, late_ms > self.cfg.late_ms,
                             measured, second)  # fmt: skip
        if self.raw_path is not None:
            if self.raw is None:
                path = self.raw_path.with_name(f"{self.raw_path.stem}-{self.index}.jsonl")
                self.raw = path.open("w", encoding="utf-8")
            row = [t0, latency_ms, status, variant, kind, late_ms, measured]
            self.raw.write(json.dumps(row) + "\n")

    def close_raw(self) -> None:
        if self.raw is not None:
            self.raw.close()
            self.raw = None

    def follow(self, plan: dict[str, Any]) -> None:
        """Worker: take the master's config, this worker's index and the worker count."""
        cfg = validate_config(LoadTestConfig, plan["config"], "the master's load-test config")
        self.adopt(cfg, int(plan["index"]), int(plan["count"]))

    def plans(self, client_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """Master: one plan per connected worker (indices in the order of their ids)."""
        clients = sorted(client_ids)
        self.count = len(clients)
        config = self.cfg.model_dump(mode="json")
        return [(client_id, {"index": i, "count": self.count, "config": config})
                for i, client_id in enumerate(clients)]  # fmt: skip

    def report(self, final: bool) -> dict[str, Any]:
        """Worker: what was recorded since the last report; after the last, nothing more."""
        self.final = final
        if final:
            self.close_raw()
        return {"index": self.index, "started_at": self.started_at, "final": final,
                "recorder": self.recorder.take()}  # fmt: skip

    def merge_report(self, data: dict[str, Any]) -> None:
        """Master: add a worker's report."""
        self.recorder.merge(data["recorder"])
        index = int(data["index"])
        self.workers[index] = data["started_at"] or self.workers.get(index)
        if data["final"]:
            self.finals.add(index)

    @property
    def all_finished(self) -> bool:
        return len(self.finals) >= self.count

    def results(self, distributed: bool) -> dict[str, Any]:
        """What the master (or the one process) writes: metadata, merged rows and windows."""
        starts = [t for t in self.workers.values() if t is not None]
        meta = {
            "mode": "open" if self.cfg.open_loop else "closed", "rate": self.cfg.rate,
            "arrivals": self.cfg.arrivals, "label_names": self.label_names,
            "started_at": (min(starts) if starts else None) if distributed else self.started_at,
            "workers": self.count if distributed else 1, "distributed": distributed,
            "workers_reported": len(self.workers) if distributed else 1,
            "workers_finished": len(self.finals) if distributed else 1,
            "histogram": {"unit": "us", "lowest": LOWEST_US, "highest": HIGHEST_US,
                          "summary_digits": SUMMARY_DIGITS, "window_digits": WINDOW_DIGITS},
        }  # fmt: skip
        return {"meta": meta, **self.recorder.dump()}
