"""Signed prediction ids: recognised by every holder of the key, forgeries refused."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from service.ids import ID_LENGTH, PredictionIds, load_key
from tuneserve.errors import ConfigError


def test_ids_are_recognised_and_forgeries_refused() -> None:
    ids = PredictionIds(b"k" * 32)
    issued = [ids.new() for _ in range(200)]
    assert len(set(issued)) == 200 and all(len(i) == ID_LENGTH for i in issued)
    assert all(ids.is_ours(i) for i in issued)
    assert PredictionIds(b"k" * 32).is_ours(issued[0])  # another worker with the key
    assert not PredictionIds(b"x" * 32).is_ours(issued[0])
    tampered = issued[0][:-1] + ("0" if issued[0][-1] != "0" else "1")
    assert not ids.is_ours(tampered)
    assert not ids.is_ours(issued[0][:-1]) and not ids.is_ours("") and not ids.is_ours("z" * 40)
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        PredictionIds(b"short")


def test_key_from_env_or_a_private_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys" / "id.key"
    monkeypatch.delenv("TEST_ID_KEY", raising=False)
    first = load_key("TEST_ID_KEY", path)
    assert load_key("TEST_ID_KEY", path) == first  # a restart reads the same key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    monkeypatch.setenv("TEST_ID_KEY", "a-shared-secret-for-all-replicas")
    assert load_key("TEST_ID_KEY", path) == b"a-shared-secret-for-all-replicas"
    path.write_text("tiny")
    monkeypatch.delenv("TEST_ID_KEY")
    with pytest.raises(ConfigError, match="too short"):
        load_key("TEST_ID_KEY", path)


def test_a_shared_store_requires_the_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "id.key"
    monkeypatch.delenv("TEST_ID_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"Set TEST_ID_KEY to the same secret on every replica"):
        load_key("TEST_ID_KEY", path, shared=True)
    assert not path.exists()  # no per-host file made behind the operator's back
    monkeypatch.setenv("TEST_ID_KEY", "too-short")
    with pytest.raises(ConfigError, match=r"too short \(9 characters, at least 16\)"):
        load_key("TEST_ID_KEY", path, shared=True)
    monkeypatch.setenv("TEST_ID_KEY", "a-shared-secret-for-all-replicas\n")  # a Secret's newline
    assert load_key("TEST_ID_KEY", path, shared=True) == b"a-shared-secret-for-all-replicas"


def _load(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(load_key("TEST_ID_KEY_UNSET", Path(path)))


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load, args=(str(path), queue)) for _ in range(4)]
    for proc in procs:
        proc.start()
    keys = {queue.get(timeout=60) for _ in procs}
    for proc in procs:
        proc.join(60)
    assert keys == {path.read_text().strip().encode()}
