"""Readiness across workers: a worker reports ready only when every live sibling has warmed up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.workers import all_live_workers_ready, mark_ready


def test_ready_only_when_every_live_worker_has_marked_itself(tmp_path: Path) -> None:
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        me, other = os.getpid(), sibling.pid
        assert not all_live_workers_ready({me, other}, tmp_path)  # nobody ready yet
        mark_ready(tmp_path)
        assert (tmp_path / f"tuneserve-ready-{me}").exists()
        assert not all_live_workers_ready({me, other}, tmp_path)  # the sibling still warms up
        (tmp_path / f"tuneserve-ready-{other}").touch()  # what the sibling's mark_ready writes
        assert all_live_workers_ready({me, other}, tmp_path)
        (tmp_path / "tuneserve-ready-junk").touch()  # a stray file is ignored
        assert all_live_workers_ready({me}, tmp_path)  # a dead worker does not hold it back
    finally:
        sibling.kill()
        sibling.wait()
    assert all_live_workers_ready(None, tmp_path)  # not a `bentoml serve` worker: its own say
