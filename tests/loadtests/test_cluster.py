"""A process's part of a run: the master's plans, a worker's reports, the master's merge."""

from __future__ import annotations

import json
import random
from pathlib import Path

from loadtests.cluster import Run
from loadtests.config import LoadTestConfig
from loadtests.schedule import worker_seed


def test_workers_follow_the_master_and_their_reports_merge(tmp_path: Path) -> None:
    master = Run(LoadTestConfig(open_loop=True, rate=90, seed=3, warmup_s=1, duration_s=2))
    plans = master.plans(["w-b", "w-a", "w-c"])
    assert [(cid, p["index"], p["count"]) for cid, p in plans] == [
        ("w-a", 0, 3), ("w-b", 1, 3), ("w-c", 2, 3)
    ]  # fmt: skip
    workers = []
    for _, plan in plans:  # each worker read its own (different) config: the master's wins
        worker = Run(LoadTestConfig(rate=5, seed=99), raw=tmp_path / "requests.jsonl")
        worker.follow(json.loads(json.dumps(plan)))
        assert (worker.cfg.rate, worker.cfg.open_loop, worker.cfg.seed) == (90, True, 3)
        assert worker.rng.random() == random.Random(worker_seed(3, plan["index"])).random()
        worker.started_at = 100.0
        workers.append(worker)
    for i, worker in enumerate(workers):
        worker.record(100.5, 5.0, 200, "a", "predict", 0.0)  # warm-up: windows only
        worker.record(101.5, 10.0 + i, 200, "b", "predict", 20.0)  # measured, late
        worker.record(101.6, 0.0, 0, "-", "dropped", 0.0)
        master.merge_report(json.loads(json.dumps(worker.report(final=i != 1))))
    assert not master.all_finished  # worker 1 has not sent its last report yet
    workers[1].record(102.0, 7.0, 200, "a", "predict", 0.0)
    master.merge_report(workers[1].report(final=True))
    workers[1].record(102.5, 7.0, 200, "a", "predict", 0.0)  # after its last report: ignored
    assert master.all_finished and workers[1].recorder.take()["rows"] == {}
    results = json.loads(json.dumps(master.results(distributed=True)))
    assert results["meta"] | {"histogram": None} == {
        "mode": "open", "rate": 90.0, "arrivals": "poisson", "label_names": {},
        "started_at": 100.0, "workers": 3, "distributed": True, "workers_reported": 3,
        "workers_finished": 3, "histogram": None,
    }  # fmt: skip
    rows = results["rows"]
    assert (rows["all"]["requests"], rows["all"]["dropped"], rows["all"]["late"]) == (7, 3, 3)
    assert rows["all"]["failures"] == 3 and rows["a"]["requests"] == 1
    assert sorted((s, n) for s, n, _ in results["windows"]) == [
        (0, "a"), (0, "all"), (1, "all"), (1, "b"), (2, "a"), (2, "all")
    ]  # fmt: skip
    dumps = sorted(p.name for p in tmp_path.glob("requests-*.jsonl"))
    assert dumps == ["requests-0.jsonl", "requests-1.jsonl", "requests-2.jsonl"]
    assert len((tmp_path / "requests-1.jsonl").read_text().splitlines()) == 4
