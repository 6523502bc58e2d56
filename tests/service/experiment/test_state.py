"""The experiment state: its JSON round trip, the config it grew from, and its stored row.

Tests taking ``new_store`` run on SQLite and on PostgreSQL (see tests/service/test_store.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from service.config import ServingConfig, load_serving_config
from service.experiment.state import ExperimentState, StateRow, fits, initial_state, read_state
from service.store import Store
from tests.service.conftest import write_serving_config


def _settings(tmp_path: Path, exports: dict[str, Path], salt: str = "s1") -> ServingConfig:
    variants = {"baseline": exports["head"], "tuned": exports["lora"]}
    path = write_serving_config(
        tmp_path / "serving.toml", variants, "baseline", experiment={"salt": salt},
        shadow={"variant": "tuned", "share": 0.25},
    )  # fmt: skip
    return load_serving_config(path)


def test_the_state_round_trips_and_knows_the_config_it_grew_from(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    state = initial_state(settings)
    assert (state.salt, state.shadow_variant, state.shadow_share) == ("s1", "tuned", 0.25)
    weights = {"baseline": 3.0, "tuned": 1.0}
    changed = replace(state, disabled=("tuned",), coverage=0.5, weights=weights)
    assert ExperimentState.from_json(changed.to_json()) == changed
    assert changed.effective_weights() == {"baseline": 3.0, "tuned": 0.0}
    assert fits(changed, settings)  # admin changes keep the origin: they survive a restart
    (tmp_path / "edited").mkdir()
    edited = _settings(tmp_path / "edited", tiny_exports, salt="s2")
    assert not fits(changed, edited)


def test_the_row_is_versioned_and_a_stale_write_is_refused(
    tmp_path: Path, tiny_exports: dict[str, Path], new_store: Callable[[], Path | str]
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    store = Store(new_store())
    row = StateRow(store)
    assert row.read() == (0, None) and row.version() == 0
    assert read_state(store, settings) == initial_state(settings)  # nothing stored: the config's
    first = initial_state(settings)
    assert row.write(first, {"by": "config"}, expected_version=0) == 1
    second = replace(first, salt="s9")
    assert row.write(second, {"by": "admin"}, expected_version=0) is None  # stale: refused
    assert row.read() == (1, first)
    assert row.write(second, {"by": "admin"}) == 2  # without a version: always written
    stored = row.read()
    assert (stored.version, stored.state) == (2, second) and row.version() == 2
    assert read_state(store, settings) == second
    assert [(e.change["by"], e.change["version"]) for e in store.history()] == [
        ("config", 1), ("admin", 2),
    ]  # fmt: skip
    store.close()
