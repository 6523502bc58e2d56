"""The deployment's experiment leader: one worker of one replica, elected by a lease row.

Decisions that need all traffic (the guardrails, the sample-ratio check) are made by the
leader alone, from store-wide figures. Leadership is a lease in the store (holder, term,
expires_at; ``Store.claim_lease``), taken and renewed in a short transaction under the store's
write lock and timed by the store's clock; it holds no session state, so it works behind
PgBouncer in transaction mode, and on SQLite as on PostgreSQL. The leader renews at every tick
(``guardrails.check_interval_s``); the others read the row at theirs and claim it once it has
run out, so a leader that dies is replaced within ``leader_lease_s`` plus one tick, and one that
stops cleanly releases it and is replaced within a tick. A decision is written only while its
writer's lease is in force (``Store.put_state(leader=...)``), so a leader that lost its lease
without noticing (paused, cut off) cannot write a late decision.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

from service import metrics
from service.store import Store

logger = logging.getLogger(__name__)


def holder_name() -> str:
    """A name for a lease holder that no other worker shares: host, process, random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Leadership:
    """One worker's part in the election: ``tick`` renews or seeks the lease."""

    def __init__(self, store: Store, lease_s: float, holder: str | None = None) -> None:
        self.store = store
        self.lease_s = lease_s
        self.holder = holder or holder_name()
        self.is_leader = False
        self.term = 0
        metrics.EXPERIMENT_LEADER.set(0)

    def tick(self) -> bool:
        """Renew the lease (leader), or take it if it has run out; whether this worker leads."""
        if not self.is_leader:
            lease = self.store.leader()
            other = lease if lease is not None and lease.holder != self.holder else None
            if other is not None and other.expires_at > time.time():  # only when to ask
                return False
        lease = self.store.claim_lease(self.holder, self.lease_s)
        self._became(lease.holder == self.holder, lease.term)
        return self.is_leader

    def lost(self) -> None:
        """Note that the lease is no longer in force (a fenced write was refused)."""
        self._became(False, self.term)

    def release(self) -> None:
        """Give the lease up (on a clean stop), so another worker takes over at its next tick."""
        if self.is_leader:
            self.store.release_lease(self.holder)
            self._became(False, self.term)

    def _became(self, leader: bool, term: int) -> None:
        if leader != self.is_leader:
            if leader:
                logger.info("experiment leader: this worker (%s) leads, term %d", self.holder,
                            term)  # fmt: skip
            else:
                logger.info("experiment leader: this worker (%s) no longer leads", self.holder)
        self.is_leader, self.term = leader, term
        metrics.EXPERIMENT_LEADER.set(int(leader))
