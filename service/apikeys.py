"""API keys: their form, their hashes, their rows in the store, and each worker's cached copy.

A key is ``ts_<id>_<secret>``: ``id`` 12 hex characters (public: the CLI, the metrics and the
logs name a key by it), ``secret`` 43 URL-safe characters (256 random bits). It is shown once,
when created; the store keeps only ``sha256(key)``, compared in constant time.

Why a plain sha256 and not an HMAC with the prediction-id key: the secret is 256 random bits, so
a stolen hash cannot be reversed or guessed (a slow or keyed hash defends low-entropy
passwords, which these are not); and a key tied to the id key would make ``tuneserve keys``
need that Secret wherever it runs, and would void every API key when the id key is rotated.

Every worker keeps the whole table in memory (:class:`KeyCache`) and re-reads it every
``auth.refresh_s`` in a thread, so the request path never waits for the store, and a new or
revoked key takes effect everywhere within that bound. While the store cannot be read, the last
copy stays in force (predictions do not depend on the store; revocations then wait for it).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.store import Store
from tuneserve.errors import ConfigError

logger = logging.getLogger(__name__)

SCOPES = ("predict", "feedback", "report", "admin")
PREFIX = "ts_"
_KEY = re.compile(r"^ts_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_COLUMNS = "id, name, hash, scopes, created, revoked, rate_per_s, burst"


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored: never the key itself, only its hash."""

    id: str
    name: str
    hash: str
    scopes: frozenset[str]
    created: float
    revoked: float | None
    rate_per_s: float | None  # None: the config's default
    burst: int | None

    def public(self) -> dict[str, object]:
        """What `tuneserve keys list` shows (no hash)."""
        return {"id": self.id, "name": self.name, "scopes": sorted(self.scopes),
                "created": self.created, "revoked": self.revoked,
                "rate_per_s": self.rate_per_s, "burst": self.burst}  # fmt: skip


def hash_key(key: str) -> str:
    """The stored form of a key: its sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The id of a well-formed key, else None (nothing else is read from it)."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def new_key() -> tuple[str, str]:
    """A fresh (id, key)."""
    kid = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)  # 43 characters
    return kid, f"{PREFIX}{kid}_{secret}"


def check_scopes(scopes: Sequence[str]) -> frozenset[str]:
    """The scopes, or a ConfigError naming the unknown ones."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ConfigError(
            f"scopes must be some of {', '.join(SCOPES)} (comma-separated), got "
            f"{', '.join(unknown) if unknown else 'none'}"
        )
    return frozenset(scopes)


class KeyStore:
    """The ``api_keys`` table of an experiment store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        name: str,
        scopes: Sequence[str],
        rate_per_s: float | None = None,
        burst: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """Store a new key; the record and the key (the only time it is seen)."""
        if not name.strip():
            raise ConfigError("a key needs a name (--name), e.g. the client it is for")
        if rate_per_s is not None and rate_per_s < 0:
            raise ConfigError(f"--rate must be 0 (unlimited) or more, got {rate_per_s:g}")
        if burst is not None and burst < 1:
            raise ConfigError(f"--burst must be at least 1, got {burst}")
        kid, key = new_key()
        record = KeyRecord(kid, name.strip(), hash_key(key), check_scopes(scopes), time.time(),
                           None, rate_per_s, burst)  # fmt: skip
        with self.store._lock:
            self.store.conn.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.name, record.hash, ",".join(sorted(record.scopes)),
                 record.created, None, rate_per_s, burst),
            )  # fmt: skip
        return record, key

    def all(self) -> list[KeyRecord]:
        """Every key, revoked ones too, oldest first."""
        rows = self.store._rows(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created, id")
        return [
            KeyRecord(str(i), str(n), str(h), frozenset(str(s).split(",")), float(c),
                      None if r is None else float(r), None if rate is None else float(rate),
                      None if b is None else int(b))
            for i, n, h, s, c, r, rate, b in rows
        ]  # fmt: skip

    def revoke(self, kid: str) -> KeyRecord:
        """Revoke a key now (it stays listed); revoking it again changes nothing."""
        with self.store._lock:
            self.store.conn.execute(
                "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                (time.time(), kid),
            )
        for record in self.all():
            if record.id == kid:
                return record
        raise ConfigError(f"no API key with id {kid!r}: `tuneserve keys list` shows them")


def _counts(keys: dict[str, KeyRecord]) -> tuple[int, int]:
    revoked = sum(r.revoked is not None for r in keys.values())
    return len(keys) - revoked, revoked


class KeyCache:
    """One worker's copy of the keys, re-read every ``refresh_s`` by a daemon thread."""

    def __init__(self, open_store: Callable[[], Store], refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self.keys: dict[str, KeyRecord] | None = None  # None until the first read succeeds
        self._open_store = open_store
        self._keys: KeyStore | None = None
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="tuneserve-keys", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        """Read the table now (the thread calls it every ``refresh_s``)."""
        if self._keys is None:
            self._keys = KeyStore(self._open_store())
        keys = {record.id: record for record in self._keys.all()}
        counts = _counts(keys)
        if self.keys is None or counts != _counts(self.keys):
            logger.info("API keys: %d in force, %d revoked", *counts)
        self.keys = keys

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
                self._failing = False
            except Exception as exc:  # keep the last copy; say so once per outage
                if not self._failing:
                    logger.warning("API keys: cannot read the store (%s); the last copy stays "
                                   "in force", type(exc).__name__)  # fmt: skip
                self._failing = True
            if self._stop.wait(self.refresh_s):
                return

    def close(self) -> None:
        """Stop the thread and close its store."""
        self._stop.set()
        self._thread.join(5)
        if self._keys is not None:
            self._keys.store.close()
