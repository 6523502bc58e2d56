"""One experiment across replicas: every replica converges to the newest stored version, an
older config never writes its state back, concurrent admin changes are never lost silently, one
leader at a time decides, and a shared store needs the shared prediction-id key.

Each ``Experiment`` here is one replica (its own store connection and lease holder); the tests
taking ``new_store`` run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service import metrics
from service.config import ServingConfig, load_serving_config
from service.errors import ConflictError, InvalidInputError
from service.experiment import Experiment
from service.experiment.leader import Leadership
from service.experiment.live import STATE_POLL_S
from service.experiment.state import StateRow
from service.ids import load_key
from service.predictor import Predictor
from service.store import Store
from tests.service.conftest import write_serving_config
from tests.service.test_guardrails import FAST, request_rows
from tuneserve.errors import ConfigError

Replicas = Callable[..., Experiment]


def _settings(
    tmp_path: Path, exports: dict[str, Path], name: str = "serving", **experiment: Any
) -> ServingConfig:
    variants = {"baseline": exports["head"], "tuned": exports["lora"]}
    path = write_serving_config(
        tmp_path / f"{name}.toml", variants, "baseline", experiment=experiment,
        guardrails=FAST | {"leader_lease_s": 1.0},
    )  # fmt: skip
    return load_serving_config(path)


@pytest.fixture
def replicas(new_store: Callable[[], Path | str]) -> Iterator[Replicas]:
    """``replica(settings)``: a new replica on the test's one store; all closed afterwards."""
    location = new_store()
    started: list[Experiment] = []

    def replica(settings: ServingConfig) -> Experiment:
        experiment = Experiment(settings, Store(location))
        started.append(experiment)
        return experiment

    yield replica
    for experiment in started:
        experiment.close()
        experiment.store.close()


def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "never happened"
        time.sleep(0.01)
    return time.monotonic() - started


def test_replicas_converge_to_the_newest_version_within_the_poll(
    tmp_path: Path, tiny_exports: dict[str, Path], replicas: Replicas
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    a, b, c = replicas(settings), replicas(settings), replicas(settings)
    assert a.version == b.version == c.version == 1  # seeded once, adopted by the others
    for weight in (2, 3, 4):
        a.change({"weights": {"baseline": weight}})
    took = _until(lambda: b.version == c.version == 4)
    assert took < STATE_POLL_S + 1.0  # the documented bound: one poll plus a store read
    assert b.state == c.state == a.state and b.router.shares == a.router.shares
    assert b.summary() == a.summary()
    assert metrics.EXPERIMENT_STATE_VERSION._value.get() == 4


def test_a_replica_cut_off_from_the_store_keeps_routing_by_its_last_state(
    tmp_path: Path, tiny_exports: dict[str, Path], replicas: Replicas,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    settings = _settings(tmp_path, tiny_exports)
    a, b = replicas(settings), replicas(settings)
    a.change({"weights": {"baseline": 3}})
    _until(lambda: b.version == 2)
    router = b.router
    b.store.close()  # b can no longer read the store
    a.change({"disable": ["tuned"]})
    time.sleep(4 * STATE_POLL_S)
    assert b.version == 2 and b.router is router and b.router.shares["tuned"] == 0.25
    assert b.router.choose(user_id="u1").variant in ("baseline", "tuned")  # still answering
    failed = [r for r in caplog.records if "experiment state poll failed" in r.getMessage()]
    assert len(failed) == 1 and "routing by version 2" in failed[0].getMessage()  # once


def test_an_older_config_never_writes_its_state_back(
    tmp_path: Path, tiny_exports: dict[str, Path], replicas: Replicas
) -> None:
    old = _settings(tmp_path, tiny_exports, "old", salt="exp-1", revision=1)
    new = _settings(tmp_path, tiny_exports, "new", salt="exp-2", revision=2)
    edited = _settings(tmp_path, tiny_exports, "edited", salt="exp-3", revision=2)
    first = replicas(old)
    assert first.state.salt == "exp-1" and first.state.revision == 1
    rolled = replicas(new)  # a newer revision: its config's state is written, a new version
    assert (rolled.state.salt, rolled.version) == ("exp-2", 2)
    _until(lambda: first.state.salt == "exp-2")  # the old pod follows the newer state
    assert first.router.salt == "exp-2"
    restarted_old = replicas(old)  # an old pod restarting mid-rollout
    assert (restarted_old.state.salt, restarted_old.version) == ("exp-2", 2)
    same_revision = replicas(edited)  # edited without a bump: cannot tell which is newer
    assert (same_revision.state.salt, same_revision.version) == ("exp-2", 2)
    rolled.change({"weights": {"tuned": 0.5}})
    again = replicas(new)  # the same config restarted: admin changes survive
    assert again.state.weights["tuned"] == 0.5 and again.version == 3
    history = [e.change for e in rolled.store.history()]
    assert [(c["by"], c.get("revision")) for c in history] == [
        ("config", 1), ("config", 2), ("admin", None),
    ]  # fmt: skip


def test_concurrent_admin_changes_are_merged_or_refused_with_409(
    tmp_path: Path, tiny_exports: dict[str, Path], replicas: Replicas
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    a, b = replicas(settings), replicas(settings)
    base = a.version
    a.change({"weights": {"baseline": 3}, "version": base})
    with pytest.raises(ConflictError, match=f"at version {base + 1}, not {base}") as refused:
        b.change({"coverage": 0.5, "version": base})  # based on a version that moved on
    assert refused.value.status == 409
    assert refused.value.headers["X-Experiment-Version"] == str(base + 1)
    b.change({"coverage": 0.5})  # without a version: applied to the newest state
    assert b.state.weights["baseline"] == 3 and b.state.coverage == 0.5  # neither change lost
    with pytest.raises(InvalidInputError, match="positive integer"):
        a.change({"coverage": 0.4, "version": "7"})
    # many changes at once from both replicas: every one lands, in some order
    changes = [(a, {"weights": {"tuned": 1 + i / 100}}) for i in range(6)]
    changes += [(b, {"shadow": {"share": i / 10}}) for i in range(6)]
    threads = [threading.Thread(target=r.change, args=(body,)) for r, body in changes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stored = StateRow(a.store).read()
    assert stored.version == base + 2 + len(changes)
    admin = [e.change for e in a.store.history() if e.change["by"] == "admin"]
    assert len(admin) == 2 + len(changes)
    assert all(h["from"] == p["to"] for p, h in itertools.pairwise(admin))  # a chain


def test_one_leader_at_a_time_and_a_new_one_takes_over(
    new_store: Callable[[], Path | str],
) -> None:
    store_a, store_b = Store(location := new_store()), Store(location)
    a, b = (
        Leadership(store_a, lease_s=1.5, holder="a"),
        Leadership(store_b, lease_s=1.5, holder="b"),
    )
    assert a.tick() and not b.tick() and a.tick()  # a renews, b waits
    assert store_a.leader().holder == "a" and store_a.leader().term == 1
    assert metrics.EXPERIMENT_LEADER._value.get() == 1  # (one gauge: both live in this process)
    a.release()  # a clean stop: b takes over at its next tick
    assert not a.is_leader and metrics.EXPERIMENT_LEADER._value.get() == 0
    assert b.tick() and not a.tick()
    assert store_a.leader()[:2] == ("b", 2)  # a new holder: a new term
    # b dies without releasing: a takes over once the lease has run out, not before
    assert not a.tick()
    time.sleep(1.6)
    assert a.tick() and store_a.leader().term == 3
    state = initial_state_json()
    assert store_b.put_state(state, {"by": "guardrail"}, leader="b") is None  # deposed: fenced
    assert store_a.put_state(state, {"by": "guardrail"}, leader="a") == 1
    assert not b.tick()  # and b learns it lost
    store_a.close()
    store_b.close()


def initial_state_json() -> dict[str, Any]:
    return {"weights": {"baseline": 1.0, "tuned": 1.0}, "salt": "s", "origin": "", "revision": 0}


def test_the_leader_alone_trips_on_store_wide_figures_and_hands_over(
    tmp_path: Path, tiny_exports: dict[str, Path], replicas: Replicas
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    a, b = replicas(settings), replicas(settings)
    _until(lambda: a.leadership.is_leader or b.leadership.is_leader)
    leader, other = (a, b) if a.leadership.is_leader else (b, a)
    time.sleep(0.3)
    assert not other.leadership.is_leader
    leader.close()  # a rolling update stops the leader: the other takes over within a tick
    _until(lambda: other.leadership.is_leader, timeout_s=2.0)
    salt, half = other.state.salt, FAST["min_requests"] // 2
    # each replica's slice is below min_requests; together they break the error bound
    for store in (a.store, b.store):
        store.log_predictions(request_rows("tuned", half, failed=half, salt=salt))
    _until(lambda: "tuned" in other.state.disabled)
    trips = [e.change for e in other.store.history() if e.change["by"] == "guardrail"]
    assert len(trips) == 1 and trips[0]["detail"]["requests"] == 2 * half


def test_a_slice_that_would_trip_alone_does_not_trip_store_wide(
    tmp_path: Path, tiny_exports: dict[str, Path], replicas: Replicas
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    a, b = replicas(settings), replicas(settings)
    salt = a.state.salt
    # replica a's own slice: 20 requests, 2 failed (10% > 5%); replica b's: 80, none failed
    a.store.log_predictions(request_rows("tuned", 20, failed=2, salt=salt))
    b.store.log_predictions(request_rows("tuned", 80, salt=salt))
    _until(lambda: a.leadership.is_leader or b.leadership.is_leader)
    time.sleep(1.0)  # ten leader ticks on 2% store-wide
    assert a.state.disabled == b.state.disabled == ()
    assert StateRow(a.store).version() == 1


def test_a_shared_store_needs_the_shared_id_key(
    tmp_path: Path, tiny_exports: dict[str, Path], new_store: Callable[[], Path | str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("TUNESERVE_ID_KEY", raising=False)
    location = new_store()
    settings = _settings(tmp_path, tiny_exports)
    settings = settings.model_copy(update={"store": replace_store(settings, location)})
    if isinstance(location, str):  # PostgreSQL: replicas share it, so a per-host file is wrong
        with pytest.raises(
            ConfigError,
            match=r"Set TUNESERVE_ID_KEY to the same secret on every "
            r"replica \(export TUNESERVE_ID_KEY=\$\(openssl rand -hex 32\)",
        ):
            Predictor(settings)  # fmt: skip
        monkeypatch.setenv("TUNESERVE_ID_KEY", "short")
        with pytest.raises(ConfigError, match="too short"):
            load_key("TUNESERVE_ID_KEY", tmp_path / "k", shared=True)
        monkeypatch.setenv("TUNESERVE_ID_KEY", "0123456789abcdef0123")
    predictor = Predictor(settings)  # SQLite: the key file; PostgreSQL: the variable
    assert predictor.ids.is_ours(predictor.ids.new())
    assert (settings.experiment.id_key_file.is_file()) == (not isinstance(location, str))
    asyncio.run(predictor.close())


def replace_store(settings: ServingConfig, location: Path | str) -> Any:
    if isinstance(location, str):
        return settings.store.model_copy(update={"url": location})
    return settings.store.model_copy(update={"path": location})
