"""Whether every worker of the server is alive, seen from inside one of them (for /livez).

BentoML's process manager replaces a dead worker (within its 10 s check interval) unless
BENTOML_CONTAINERIZED is set, with any value, as images made by `bentoml containerize` do; there a
worker killed by the kernel (out of memory) stays dead while the others keep answering /readyz,
and the server silently runs on fewer workers. So where BentoML will not respawn, /livez fails
when fewer than the configured workers are alive, and a liveness probe restarts the container.
"""

from __future__ import annotations

import logging

import psutil

logger = logging.getLogger(__name__)

_WORKER_MODULE = "_bentoml_impl.worker"


def _is_worker(process: psutil.Process) -> bool:
    try:
        return any(part.startswith(_WORKER_MODULE) for part in process.cmdline())
    except psutil.Error:
        return False


def live_workers() -> int | None:
    """Live worker processes of this server (siblings included), or None when this process is
    not a `bentoml serve` worker (in-process tests)."""
    me = psutil.Process()
    parent = me.parent()
    if parent is None or not _is_worker(me):
        return None
    alive = 0
    for child in parent.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and _is_worker(child):
                alive += 1
        except psutil.Error:  # it ended while we looked
            continue
    return alive


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
