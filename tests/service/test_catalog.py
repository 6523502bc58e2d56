"""The runtime variant catalog in the store (SQLite and PostgreSQL) and the rule that turns the
serving config and the catalog into the variants served."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from service.catalog import REMOVED, Catalog, served_variants, serving_variants
from service.config import ServingConfig, load_serving_config
from service.errors import ConflictError
from service.experiment.state import Changed, ExperimentState, StateRow
from service.store import Store
from tests.service.conftest import write_serving_config


def _settings(tmp_path: Path) -> ServingConfig:
    variants = {"baseline": tmp_path / "b", "tuned": tmp_path / "t", "other": tmp_path / "o"}
    return load_serving_config(
        write_serving_config(tmp_path / "serving.toml", variants, "baseline")
    )


def test_every_write_raises_the_version_and_the_last_change_per_name_wins(
    new_store: Callable[[], Path | str],
) -> None:
    catalog = Catalog(Store(new_store()))
    assert catalog.version() == 0 and catalog.entries() == []
    first = catalog.put("tuned", Path("/models/a"), "run-a@0123456789ab", "0" * 64)
    assert (first.version, first.status, first.path) == (1, "active", "/models/a")
    catalog.put("fresh", Path("/models/b"), "run-b@0123456789ab", "1" * 64)
    catalog.put("tuned", Path("/models/c"), "run-c@0123456789ab", "2" * 64)
    assert catalog.version() == 3
    entries = catalog.entries()
    assert [(e.name, e.version, e.path) for e in entries] == [
        ("fresh", 2, "/models/b"),
        ("tuned", 3, "/models/c"),
    ]
    again = Catalog(Store(catalog.store.path or catalog.store.url or ""))  # another worker
    assert again.version() == 3 and again.entries() == entries


def test_served_variants_apply_the_catalog_to_the_config(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    catalog = Catalog(Store(settings.store.path))
    assert served_variants(settings, []) == settings.variants
    catalog.put("zeta", tmp_path / "z", "z@1", "a" * 64)
    catalog.put("tuned", tmp_path / "t2", "t@2", "b" * 64)
    catalog.put("alpha", tmp_path / "a", "a@1", "c" * 64)
    with catalog.store._lock:  # a removal, as DELETE /models/{name} writes it
        catalog.write("other", "removed")
    served = served_variants(settings, catalog.entries())
    # the config's in its order (removed ones left out), then the added ones by name at weight 0
    assert [(v.name, v.path, v.weight) for v in served] == [
        ("baseline", tmp_path / "b", 1.0),
        ("tuned", tmp_path / "t2", 1.0),
        ("alpha", tmp_path / "a", 0.0),
        ("zeta", tmp_path / "z", 0.0),
    ]
    assert [v.control for v in served] == [True, False, False, False]
    assert serving_variants(settings) == served  # what a starting worker reads


def test_the_control_is_served_even_if_an_older_catalog_removed_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    catalog = Catalog(Store(settings.store.path))
    with catalog.store._lock:
        catalog.write("baseline", "removed")
    with caplog.at_level("WARNING"):
        served = served_variants(settings, catalog.entries())
    assert [v.name for v in served] == ["baseline", "tuned", "other"]
    assert "the serving config makes it the control" in caplog.text


def test_a_removal_is_stored_with_the_state_change_or_not_at_all(
    new_store: Callable[[], Path | str],
) -> None:
    """DELETE /models/{name} writes the tombstone inside the experiment state's transaction."""
    store = Store(new_store())
    catalog, row = Catalog(store), StateRow(store)
    row.write(ExperimentState({"baseline": 1.0, "fresh": 0.0}, "salt-1"), {"by": "test"})
    catalog.put("fresh", Path("/models/fresh"), "fresh@1", "f" * 64)

    def refused(_: int, stored: ExperimentState | None) -> Changed:
        catalog.write("fresh", REMOVED)
        raise ConflictError("refused after the write: it must roll back")

    with pytest.raises(ConflictError):
        row.update(refused)
    assert [(e.status, e.version) for e in catalog.entries()] == [("active", 1)]

    def removed(_: int, stored: ExperimentState | None) -> Changed:
        catalog.write("fresh", REMOVED)
        assert stored is not None
        return replace(stored, weights={"baseline": 1.0}), {"by": "test"}

    row.update(removed)
    assert [(e.status, e.version) for e in catalog.entries()] == [("removed", 2)]
    state = row.read().state
    assert state is not None and state.weights == {"baseline": 1.0}
