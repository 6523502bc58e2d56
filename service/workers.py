"""Whether every worker of the server is alive (for /livez) and warmed (for /readyz), seen from
inside one of them.

Readiness: /readyz is answered by whichever worker accepts the connection, and a sibling still
warming up answers predictions with 503, so a worker reports ready only when every live worker of
the server is. Each worker marks itself ready with a file named by its pid in the server's
Prometheus multiprocess directory (fresh for each `bentoml serve`, shared by its workers); a dead
worker's file is ignored, so a dead worker (replaced or not) does not hold readiness back.

BentoML's process manager replaces a dead worker (within its 10 s check interval) unless
BENTOML_CONTAINERIZED is set, with any value, as images made by `bentoml containerize` do; there a
worker killed by the kernel (out of memory) stays dead while the others keep answering /readyz,
and the server silently runs on fewer workers. So where BentoML will not respawn, /livez fails
when fewer than the configured workers are alive, and a liveness probe restarts the container.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

_WORKER_MODULE = "_bentoml_impl.worker"
_READY_PREFIX = "tuneserve-ready-"


def _is_worker(process: psutil.Process) -> bool:
    try:
        return any(part.startswith(_WORKER_MODULE) for part in process.cmdline())
    except psutil.Error:
        return False


def live_worker_pids() -> set[int] | None:
    """Pids of the live worker processes of this server (siblings included), or None when this
    process is not a `bentoml serve` worker (in-process tests)."""
    me = psutil.Process()
    parent = me.parent()
    if parent is None or not _is_worker(me):
        return None
    alive = set()
    for child in parent.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and _is_worker(child):
                alive.add(child.pid)
        except psutil.Error:  # it ended while we looked
            continue
    return alive


def live_workers() -> int | None:
    """How many workers of this server are alive, or None outside `bentoml serve`."""
    pids = live_worker_pids()
    return None if pids is None else len(pids)


def _ready_dir() -> Path | None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(directory) if directory else None


def mark_ready(directory: Path | None = None) -> None:
    """Record, for the sibling workers' /readyz, that this worker has warmed up."""
    directory = directory or _ready_dir()
    if directory is not None and directory.is_dir():
        (directory / f"{_READY_PREFIX}{os.getpid()}").touch()


def all_live_workers_ready(live: set[int] | None = None, directory: Path | None = None) -> bool:
    """False while a live worker of this server has not marked itself ready; True outside
    `bentoml serve`. ``live`` and ``directory`` default to this server's."""
    live = live_worker_pids() if live is None else live
    directory = directory or _ready_dir()
    if live is None or directory is None:
        return True
    ready = {
        int(path.name.removeprefix(_READY_PREFIX))
        for path in directory.glob(_READY_PREFIX + "*")
        if path.name.removeprefix(_READY_PREFIX).isdigit()
    }
    return live <= ready


def bentoml_respawns_workers() -> bool:
    """Whether BentoML replaces dead workers here (its own rule, bentoml.serving)."""
    from bentoml.serving import running_inside_container

    return not running_inside_container()


def all_workers_alive(expected: int) -> bool:
    """False when BentoML will not respawn and fewer than ``expected`` workers are alive."""
    if bentoml_respawns_workers():
        return True
    alive = live_workers()
    if alive is None or alive >= expected:
        return True
    logger.error(
        "%d of %d workers alive and BentoML does not respawn them (BENTOML_CONTAINERIZED is "
        "set): /livez fails so that the container is restarted",
        alive,
        expected,
    )
    return False
