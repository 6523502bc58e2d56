"""API keys: their form and hashes, their rows in a real store (SQLite, and PostgreSQL when
$TUNESERVE_TEST_PG_URL is set), and a worker's cache that follows new and revoked keys."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.apikeys import KeyCache, KeyStore, check_scopes, hash_key, key_id, new_key
from service.store import Store
from tuneserve.errors import ConfigError

NewStore = Callable[[], Path | str]


def test_a_key_is_random_names_its_id_and_is_stored_as_its_sha256() -> None:
    kid, key = new_key()
    other_id, other = new_key()
    assert key != other and kid != other_id
    assert key.startswith(f"ts_{kid}_") and len(key) == 3 + 12 + 1 + 43
    assert key_id(key) == kid
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest() != hash_key(other)
    for bad in ("", "ts_", f"ts_{kid}", f"ts_{kid}_short", "Bearer " + key, key + "x",
                f"xx_{kid}_{key[-43:]}", "the-admin-token"):  # fmt: skip
        assert key_id(bad) is None


def test_scopes_are_checked() -> None:
    assert check_scopes(["predict", "report"]) == {"predict", "report"}
    with pytest.raises(ConfigError, match="scopes must be some of predict, feedback, report, "
                       "admin .*got everything"):  # fmt: skip
        check_scopes(["predict", "everything"])
    with pytest.raises(ConfigError, match="got none"):
        check_scopes([])


def test_keys_are_created_listed_and_revoked_in_the_store(new_store: NewStore) -> None:
    keys = KeyStore(Store(new_store()))
    record, key = keys.create("billing-service", ["predict", "feedback"], rate_per_s=5.0, burst=10)
    admin, _ = keys.create("ops", ["admin"])
    assert record.id == key_id(key) and record.hash == hash_key(key)
    listed = {r.id: r for r in keys.all()}
    assert listed[record.id] == record and listed[admin.id].rate_per_s is None
    rows = keys.store.conn.execute("SELECT * FROM api_keys").fetchall()
    assert not any(key in str(value) for row in rows for value in row), "the key was stored"
    assert "hash" not in record.public() and record.public()["scopes"] == ["feedback", "predict"]
    revoked = keys.revoke(record.id)
    assert revoked.revoked is not None and revoked.revoked >= record.created
    assert keys.revoke(record.id).revoked == revoked.revoked  # again: nothing changes
    with pytest.raises(ConfigError, match="no API key with id 'nope'"):
        keys.revoke("nope")
    with pytest.raises(ConfigError, match="--burst must be at least 1"):
        keys.create("x", ["predict"], burst=0)
    with pytest.raises(ConfigError, match="a key needs a name"):
        keys.create(" ", ["predict"])
    keys.store.close()


def test_every_cache_sees_a_new_and_a_revoked_key_within_its_refresh(
    new_store: NewStore,
) -> None:
    where = new_store()
    admin = KeyStore(Store(where))  # the CLI's connection: another process in real life
    caches = [KeyCache(lambda: Store(where), refresh_s=0.2) for _ in range(2)]  # two workers
    try:
        deadline = time.monotonic() + 5
        while any(c.keys is None for c in caches):
            assert time.monotonic() < deadline, "a cache never read the store"
            time.sleep(0.01)
        record, _ = admin.create("client", ["predict"])
        created = time.monotonic()
        while not all(record.id in (c.keys or {}) for c in caches):
            assert time.monotonic() - created < 1.0, "a new key was not seen within 1 s"
            time.sleep(0.01)
        admin.revoke(record.id)
        revoked = time.monotonic()
        while not all((c.keys or {})[record.id].revoked for c in caches):
            assert time.monotonic() - revoked < 1.0, "a revoked key stayed in force over 1 s"
            time.sleep(0.01)
    finally:
        for cache in caches:
            cache.close()
        admin.store.close()
