"""Hot model swap: the served variants of one worker, and how they change without a restart.

``Variants`` holds each served variant's model and runner. A change (PUT or DELETE /models/{name}
on this worker, or a newer catalog version another worker wrote; service/catalog.py) loads and
warms the new model beside the old one, with the same hash checks as at start, then switches
atomically: a request takes its variant's model and runner once (``acquire``) and finishes on
them, while new requests get the new ones; the old runner stops once its last request is done.
A model that does not verify or load changes nothing: the old one keeps serving. The catalog's
version is polled by the experiment's state poller (``poll``, every STATE_POLL_S); loading runs
in a thread of its own, so the poller is never held up.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service import metrics
from service.batching import Runner
from service.catalog import ACTIVE, REMOVED, Catalog, CatalogEntry, served_variants
from service.config import ServingConfig, VariantConfig
from service.errors import ConflictError, InvalidInputError, ModelRejectedError, NotFoundError
from service.experiment import Experiment, ExperimentState
from service.experiment.state import StateRow
from service.model import VariantModel, load_model, serving_sha256
from service.routing import check_weights

logger = logging.getLogger(__name__)

PUT_KEYS = ("path", "sha256", "model_version")


@dataclass(eq=False)
class Served:
    """One variant as this worker serves it now; ``inflight``: requests running on it."""

    config: VariantConfig
    model: VariantModel
    runner: Runner
    inflight: int = 0
    retired: bool = False


class Variants:
    """Every variant of one worker: what serves each, and the swaps that change it."""

    def __init__(
        self,
        settings: ServingConfig,
        configs: list[VariantConfig],
        runner: Callable[[VariantModel], Runner],
        expected: dict[str, str] | None = None,
    ) -> None:
        """Load ``configs``; ``expected``: the model version the catalog names for some."""
        self.settings = settings
        self.make_runner = runner
        self.served = {c.name: Served(c, m, runner(m))
                       for c in configs for m in [VariantModel(c, settings)]}  # fmt: skip
        self.errors: dict[str, str] = {}  # variant -> why this worker did not load its model
        self.seen_version = 0  # the catalog version this worker serves
        self._lock = threading.Lock()  # ``served`` and each entry's inflight count
        self._changing = threading.Lock()  # one change at a time: admin call or follower
        self._follower: threading.Thread | None = None
        for name, entry in self.served.items():
            _info(entry.model, 1)
            want = (expected or {}).get(name, entry.model.version)
            if entry.model.version != want:  # its files were changed since the swap
                self.errors[name] = (f"{entry.config.path} holds {entry.model.version}, not the "
                                     f"{want} the catalog names: served anyway")  # fmt: skip
                logger.error("variant %s: %s", name, self.errors[name])

    def attach(self, catalog: Catalog, experiment: Experiment, seen_version: int) -> None:
        """Follow ``catalog`` from ``seen_version`` on, polled by ``experiment``'s poller."""
        self.catalog, self.experiment, self.seen_version = catalog, experiment, seen_version
        experiment.serve(self._routing())
        experiment.watchers.append(self.poll)
        metrics.MODEL_CATALOG_VERSION.set(seen_version)

    @property
    def models(self) -> dict[str, VariantModel]:
        return {name: entry.model for name, entry in self.served.items()}

    def acquire(self, name: str) -> Served:
        """The variant's model and runner for one request (``release`` it when done)."""
        with self._lock:
            entry = self.served.get(name)
            if entry is None:
                raise InvalidInputError(f"variant {name!r} was removed: it is no longer served")
            entry.inflight += 1
        return entry

    def release(self, entry: Served) -> None:
        with self._lock:
            entry.inflight -= 1
            done = entry.retired and entry.inflight == 0
        if done:
            entry.runner.retire()

    def summary(self) -> dict[str, Any]:
        """What GET /models says of the catalog on this worker."""
        return {"version": self.seen_version, "errors": dict(self.errors), "worker": os.getpid()}

    def put(self, name: str, body: Any) -> dict[str, Any]:
        """PUT /models/{name}: verify, load and warm the model, store it in the catalog, switch
        this worker to it (the others follow the catalog). 400/409/422 and nothing changed if
        not."""
        if not isinstance(body, dict) or set(body) - set(PUT_KEYS) or "path" not in body:
            raise InvalidInputError(
                'the body must be a JSON object {"path": export run directory on the server} '
                "with optionally sha256 (of its serving model) and model_version to expect"
            )
        if not all(isinstance(body.get(k, ""), str) and body.get(k, "x") for k in PUT_KEYS):
            raise InvalidInputError("path, sha256 and model_version must be non-empty strings")
        try:
            path = Path(body["path"]).resolve()
        except (ValueError, OSError) as exc:  # a NUL byte, a loop of links
            raise InvalidInputError(f"path is not a usable path: {exc}") from None
        try:
            config = VariantConfig(name=name, path=path, weight=0.0, control=False)
        except ValidationError as exc:
            raise InvalidInputError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        with self._changing:
            old = self.served.get(name)
            if old is None:
                self._check_room(name)
            try:
                model = load_model(config, self.settings, body.get("model_version"),
                                   body.get("sha256"))  # fmt: skip
            except ModelRejectedError as exc:
                metrics.MODEL_SWAPS.labels(variant=name, outcome="failed").inc()
                logger.warning("hot swap refused: %s; nothing changed", exc.message)
                raise
            if old is not None and (old.model.version, old.config.path) == (
                model.version,
                config.path,
            ):
                return {"variant": name, "model_version": model.version, "changed": False}
            sha = serving_sha256(model.manifest, model.details.serving_model)
            entry = self.catalog.put(name, config.path, model.version, sha)
            self._reconcile(self.catalog.entries(), {name: model})
        return {"variant": name, "model_version": model.version, "changed": True,
                "catalog": entry.to_json()}  # fmt: skip

    def _check_room(self, name: str) -> None:
        """409 unless the weights stay routable with ``name`` as one more challenger (each
        challenger's slot shrinks to 1/k of the buckets; service/routing.py)."""
        weights = self.experiment.state.effective_weights()
        served = {n: weights.get(n, 0.0) for n in self.served} | {name: 0.0}
        try:
            check_weights(served, self.experiment.control)
        except ValueError as exc:
            raise ConflictError(
                f"{name!r} cannot be added as one more challenger with the weights now: {exc}"
            ) from None

    def remove(self, name: str) -> dict[str, Any]:
        """DELETE /models/{name}: refused (409) for the control, a variant with traffic or the
        shadow variant; else stored with the state's entry for it dropped, in one transaction."""
        with self._changing:
            active = {e.name for e in self.catalog.entries() if e.status == ACTIVE}
            if name not in self.served and name not in active:
                raise NotFoundError(f"no variant {name!r} is served: see GET /models")
            # the control in force (a promotion moves it), and the config's, which a restart
            # serves again whatever the catalog says (catalog.served_variants)
            if name in (self.experiment.control, self.settings.control.name):
                raise ConflictError(
                    f"{name!r} is the control and cannot be removed: replace its model (PUT "
                    "/models/{name}) or make another variant the control in the serving config"
                )

            def update(_: int, stored: ExperimentState | None) -> tuple[Any, dict[str, Any]]:
                state = stored or self.experiment.state
                weight = state.effective_weights().get(name, 0.0)
                if weight > 0:
                    raise ConflictError(
                        f"variant {name!r} still has weight {weight:g}: set it to 0 or disable "
                        "it (PUT /ab/config) before removing it"
                    )
                if state.shadow_variant == name:
                    raise ConflictError(f"variant {name!r} is the shadow variant: set shadow "
                                        'to {"variant": ""} (PUT /ab/config) first')  # fmt: skip
                self.catalog.write(name, REMOVED)  # in the state's transaction
                weights = {n: w for n, w in state.weights.items() if n != name}
                disabled = tuple(n for n in state.disabled if n != name)
                new = replace(state, weights=weights, disabled=disabled)
                return new, {"by": "admin", "removed_variant": name, "from": state.to_json(),
                             "to": new.to_json()}  # fmt: skip

            StateRow(self.experiment.store).update(update)
            self._reconcile(self.catalog.entries())
        return {"variant": name, "removed": True}

    def poll(self) -> None:
        """Start following a newer catalog version (called by the experiment's poller)."""
        if self.catalog.version() == self.seen_version:
            return
        if self._follower is None or not self._follower.is_alive():
            self._follower = threading.Thread(target=self._follow, name="tuneserve-swap",
                                              daemon=True)  # fmt: skip
            self._follower.start()

    def _follow(self) -> None:
        try:
            while True:
                with self._changing:
                    version = self.catalog.version()
                    if version == self.seen_version:
                        return
                    self._reconcile(self.catalog.entries())
        except Exception as exc:  # the store is away: the next poll starts again
            logger.warning("variant catalog not followed: %s", type(exc).__name__)

    def _reconcile(
        self, entries: list[CatalogEntry], loaded: dict[str, VariantModel] | None = None
    ) -> None:
        """Serve what ``entries`` say: load what changed (``loaded``: already loaded), then
        switch. The caller holds ``_changing``."""
        loaded = dict(loaded or {})
        expected = {e.name: e.model_version for e in entries if e.status == ACTIVE}
        wanted = served_variants(self.settings, entries)
        for config in wanted:
            name = config.name
            if name in loaded or self._serves(config, expected.get(name)):
                continue
            try:
                loaded[name] = load_model(config, self.settings, expected.get(name))
                self.errors.pop(name, None)
            except ModelRejectedError as exc:
                self.errors[name] = exc.message
                metrics.MODEL_SWAPS.labels(variant=name, outcome="failed").inc()
                logger.error("hot swap failed on this worker: %s; the old model keeps serving",
                             exc.message)  # fmt: skip
        configs = {c.name: c for c in wanted}
        self._switch({n: Served(configs[n], m, self.make_runner(m)) for n, m in loaded.items()},
                     [n for n in configs if n in loaded or n in self.served])  # fmt: skip
        self.seen_version = max((e.version for e in entries), default=0)
        metrics.MODEL_CATALOG_VERSION.set(self.seen_version)

    def _serves(self, config: VariantConfig, model_version: str | None) -> bool:
        """Whether this worker already serves ``config`` (at ``model_version`` when given)."""
        entry = self.served.get(config.name)
        if entry is None or entry.config.path != config.path:
            return False
        return model_version is None or entry.model.version == model_version

    def _switch(self, new: dict[str, Served], names: list[str]) -> None:
        """Additions and replacements first, then the router, then removals: a request that
        was routed to a variant always finds it (a forced one to a removed variant excepted)."""
        with self._lock:
            before = self.served
            self.served = {**before, **new}
        self.experiment.serve(self._routing(names))
        with self._lock:
            self.served = {n: self.served[n] for n in names}
            gone = [e for n, e in before.items() if n in new or n not in self.served]
            for entry in gone:
                entry.retired = True
            idle = [entry for entry in gone if entry.inflight == 0]
        for entry in idle:
            entry.runner.retire()
        for entry in gone:
            _info(entry.model, 0)
        for name in [*new, *(set(before) - set(self.served))]:
            self.errors.pop(name, None)  # served as asked now, or not at all
        for name, entry in new.items():
            _info(entry.model, 1)
            outcome = "replaced" if name in before else "added"
            metrics.MODEL_SWAPS.labels(variant=name, outcome=outcome).inc()
            logger.info("hot swap: %s %s, now %s", name, outcome, entry.model.version)
        for name in set(before) - set(self.served):
            metrics.MODEL_SWAPS.labels(variant=name, outcome="removed").inc()
            logger.info("hot swap: %s removed", name)

    def _routing(self, names: list[str] | None = None) -> ServingConfig:
        """The serving config the experiment routes by: the variants served here."""
        names = list(self.served) if names is None else names
        return self.settings.model_copy(update={"variants": [self.served[n].config
                                                             for n in names]})  # fmt: skip


def _info(model: VariantModel, value: int) -> None:
    metrics.MODEL_INFO.labels(variant=model.name, version=model.version,
                              quantization=model.quantization,
                              provider=model.provider).set(value)  # fmt: skip
