"""The runtime variant catalog: variants added, replaced or removed without a restart, kept in
the store on top of the serving config's, so every worker of every replica follows it and a
restart serves what it says.

A row per variant name ever changed at runtime (the ``variants`` table): ``active`` with the
export path and the model version the admin's worker verified, or ``removed`` (a tombstone, so
a removed config variant stays removed). Each write raises the catalog version by one (the
highest row version), under the store's write lock; workers poll it (service/swap.py).
``served_variants`` is the one rule that turns the config and the catalog into the variants a
worker serves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.config import ServingConfig, VariantConfig
from service.pool import StoreUnavailableError
from service.store import Store
from tuneserve.errors import ConfigError

logger = logging.getLogger(__name__)

ACTIVE, REMOVED = "active", "removed"
_COLUMNS = "name, version, ts, status, path, model_version, sha256, reason"


@dataclass(frozen=True)
class CatalogEntry:
    """One variant's runtime change: served from ``path`` (``active``) or ``removed``."""

    name: str
    version: int  # the catalog version of this change
    ts: float
    status: str
    path: str
    model_version: str
    sha256: str  # of the serving model file
    reason: str  # who made the change ("admin")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "catalog_version": self.version,
            "ts": self.ts,
            "status": self.status,
            "path": self.path,
            "model_version": self.model_version,
            "sha256": self.sha256,
        }


class Catalog:
    """The ``variants`` table of a store: read by every worker, written by the admin API."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def version(self) -> int:
        """The catalog version (0: nothing changed at runtime yet); cheap, read at every poll."""
        rows = self.store._rows("SELECT MAX(version) FROM variants")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def entries(self) -> list[CatalogEntry]:
        """Every runtime change, one per name, oldest first."""
        rows = self.store._rows(f"SELECT {_COLUMNS} FROM variants ORDER BY version")
        return [
            CatalogEntry(str(r[0]), int(r[1]), float(r[2]), *(str(v) for v in r[3:])) for r in rows
        ]

    def put(self, name: str, path: Path, model_version: str, sha256: str) -> CatalogEntry:
        """Serve ``name`` from ``path`` (added, or replacing what it served); the new entry."""
        with self.store._lock:
            self.store.conn.execute("BEGIN IMMEDIATE")
            try:
                entry = self.write(name, ACTIVE, str(path), model_version, sha256)
                self.store.conn.execute("COMMIT")
            except BaseException:
                self.store.conn.execute("ROLLBACK")
                raise
        return entry

    def write(
        self, name: str, status: str, path: str = "", model_version: str = "", sha256: str = ""
    ) -> CatalogEntry:
        """Write one entry inside the caller's transaction (which holds the store's write
        lock: ``put``, or the experiment state's update when a variant is removed)."""
        conn = self.store.conn
        row = conn.execute("SELECT MAX(version) FROM variants").fetchone()
        version = (int(row[0]) if row and row[0] is not None else 0) + 1
        entry = CatalogEntry(name, version, time.time(), status, path, model_version, sha256,
                             "admin")  # fmt: skip
        conn.execute(
            f"INSERT INTO variants ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET version = excluded.version, ts = excluded.ts, "
            "status = excluded.status, path = excluded.path, "
            "model_version = excluded.model_version, sha256 = excluded.sha256, "
            "reason = excluded.reason",
            (entry.name, entry.version, entry.ts, entry.status, entry.path,
             entry.model_version, entry.sha256, entry.reason),
        )  # fmt: skip
        return entry


def served_variants(settings: ServingConfig, entries: list[CatalogEntry]) -> list[VariantConfig]:
    """The variants to serve: the config's (in its order) with the catalog's changes applied,
    then the variants the catalog added (by name), which start at weight 0.

    The config's control is always served, even where an older catalog removed it (the admin
    API refuses to remove the control; a later config may have made a removed variant the
    control)."""
    changed = {e.name: e for e in entries}
    served = []
    for variant in settings.variants:
        entry = changed.get(variant.name)
        if entry is None:
            served.append(variant)
        elif entry.status == ACTIVE:
            served.append(variant.model_copy(update={"path": Path(entry.path)}))
        elif variant.control:
            logger.warning(
                "the variant catalog removed %s, but the serving config makes it the control: "
                "serving it from the config", variant.name,
            )  # fmt: skip
            served.append(variant)
    names = set(settings.variant_names())
    for entry in sorted(changed.values(), key=lambda e: e.name):
        if entry.status == ACTIVE and entry.name not in names:
            served.append(
                VariantConfig(name=entry.name, path=Path(entry.path), weight=0.0, control=False)
            )
    return served


def serving_variants(settings: ServingConfig) -> list[VariantConfig]:
    """The variants a worker starting now serves: the config's with the stored catalog applied
    (the config's alone while the store cannot be read: the workers then say why)."""
    store = settings.store
    try:
        opened = Store(store.location(), store.busy_timeout_ms)
    except ConfigError as exc:
        logger.warning("the variant catalog cannot be read (%s): checking the config's", exc)
        return list(settings.variants)
    try:
        return served_variants(settings, Catalog(opened).entries())
    except StoreUnavailableError:
        return list(settings.variants)
    finally:
        opened.close()
