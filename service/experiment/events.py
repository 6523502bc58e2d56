"""Rollout events: one row per transition of a rollout plan (the store's rollout_events table).

A transition's row is written in the transaction that changes the experiment state (the
``also`` of ``Store.update_state``), so there is an event exactly when the state changed, with
the state version it made; a deposed leader's refused write leaves neither.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from service.dialect import Connection
from service.store import Store

EVENT_KINDS = ("start", "advance", "promote", "rollback", "pause", "resume", "abort")
_COLUMNS = "ts, salt, challenger, kind, from_step, to_step, why, figures, state_version"


@dataclass(frozen=True)
class Event:
    """One transition: when, which challenger, what kind, its share before and after, why, and
    the figures the decision was made on."""

    ts: float
    challenger: str
    kind: str
    from_step: float
    to_step: float
    why: str
    figures: dict[str, Any] = field(default_factory=dict)
    salt: str = ""
    state_version: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def record_event(conn: Connection, version: int, change: dict[str, Any]) -> None:
    """Write the event a state change carries (``change["event"]``), inside its transaction
    (the ``also`` of ``Store.update_state``); a change without one writes nothing."""
    event = change.get("event")
    if event is None:
        return
    conn.execute(
        f"INSERT INTO rollout_events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event["ts"], event["salt"], event["challenger"], event["kind"], event["from_step"],
         event["to_step"], event["why"], json.dumps(event["figures"], sort_keys=True), version),
    )  # fmt: skip


def read_events(store: Store, salt: str | None = None) -> list[Event]:
    """The rollout events, oldest first; of the experiment ``salt`` names when given."""
    where, params = ("WHERE salt = ?", (salt,)) if salt is not None else ("", ())
    rows = store._rows(f"SELECT {_COLUMNS} FROM rollout_events {where} ORDER BY id", params)
    return [
        Event(float(ts), str(ch), str(kind), float(a), float(b), str(why), json.loads(figs),
              str(s), int(v))
        for ts, s, ch, kind, a, b, why, figs, v in rows
    ]  # fmt: skip
