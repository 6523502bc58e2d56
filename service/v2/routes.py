"""The v2 protocol's HTTP routes: server and model health, metadata, and inference.

``{name}`` is the serving config's ``name`` (the experiment: routed by the A/B rules, sticky by
``parameters.user_id`` or the X-User-Id header, as POST /predict) or a variant's name (forced to
that variant and kept out of the A/B statistics, as /predict's ``variant``). Variants are looked
up in the worker's Predictor at request time. A version in the path must be one the name serves
now: a variant's own model version, or for the experiment the version of one of its variants
(which then answers, forced). Errors are raised as ``ServiceError`` and leave in the v2 shape
(service/v2/shape.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.config import ServingConfig
from service.errors import InvalidInputError, NotFoundError, UnavailableError
from service.v2.tensors import BINARY_UNSUPPORTED, infer_response, metadata_tensors, parse_infer
from service.validation import check_user_id
from tuneserve import __version__

if TYPE_CHECKING:
    from service.predictor import Predictor

SERVER_NAME = "tuneserve"
EXTENSIONS: list[str] = []  # none of the optional extensions (binary tensor data among them)
PLATFORM = "onnx_onnxv1"  # every variant is an ONNX model run by ONNX Runtime
BINARY_HEADER = "inference-header-content-length"  # the binary tensor data extension's
USER_ID_HEADER = "X-User-Id"

Probe = Callable[["Predictor"], bool]


class V2Api:
    """The routes of the protocol over one worker's Predictor (``app.state.predictor``)."""

    def __init__(self, settings: ServingConfig, is_live: Probe, is_ready: Probe) -> None:
        self.settings = settings
        self.is_live = is_live
        self.is_ready = is_ready

    def routes(self) -> list[Route]:
        """Every route, with and without ``/versions/{version}``."""
        routes = [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
        ]
        for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [
                Route(model, self.model_metadata, methods=["GET"]),
                Route(f"{model}/ready", self.model_ready, methods=["GET"]),
                Route(f"{model}/infer", self.infer, methods=["POST"]),
            ]
        return routes

    def _predictor(self, request: Request) -> Predictor:
        predictor: Predictor | None = getattr(request.app.state, "predictor", None)
        if predictor is None:
            raise UnavailableError(
                "the service is still starting; retry shortly",
                retry_after_s=self.settings.limits.retry_after_s,
            )
        return predictor

    async def _check_ready(self, predictor: Predictor) -> None:
        # anyio's threads, as /readyz: the sibling workers' readiness is read from files
        if not await anyio.to_thread.run_sync(self.is_ready, predictor):
            raise UnavailableError(
                "not ready: the models are still loading or warming up; retry shortly",
                retry_after_s=self.settings.limits.retry_after_s,
            )

    async def server_metadata(self, _: Request) -> JSONResponse:
        return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> JSONResponse:
        predictor = getattr(request.app.state, "predictor", None)  # None: starting, alive
        if predictor is not None and not self.is_live(predictor):
            raise UnavailableError(
                "not live: a worker failed to warm up or died; the server log says why",
                retry_after_s=self.settings.limits.retry_after_s,
            )
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> JSONResponse:
        await self._check_ready(self._predictor(request))
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> JSONResponse:
        predictor = self._predictor(request)
        name, version = request.path_params["name"], request.path_params.get("version")
        forced = resolve(predictor, self.settings.name, name, version)
        if version is not None:
            versions = [version]
        elif forced is not None:
            versions = [predictor.models[forced].version]
        else:
            versions = list(dict.fromkeys(m.version for m in predictor.models.values()))
        return JSONResponse(
            {"name": name, "versions": versions, "platform": PLATFORM, **metadata_tensors()}
        )

    async def model_ready(self, request: Request) -> JSONResponse:
        predictor = self._predictor(request)
        name = request.path_params["name"]
        resolve(predictor, self.settings.name, name, request.path_params.get("version"))
        await self._check_ready(predictor)
        return JSONResponse({"name": name, "ready": True})

    async def infer(self, request: Request) -> JSONResponse:
        if BINARY_HEADER in request.headers:
            raise InvalidInputError(BINARY_UNSUPPORTED)
        predictor = self._predictor(request)
        name, version = request.path_params["name"], request.path_params.get("version")
        forced = resolve(predictor, self.settings.name, name, version)
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # RecursionError: nested too deep to read
            raise InvalidInputError("the body is not valid JSON (a v2 inference request)") from None
        asked = parse_infer(body, self.settings.limits.max_batch_texts)
        user_id = asked.user_id
        if user_id is None:
            user_id = check_user_id(request.headers.get(USER_ID_HEADER))
        answers = await predictor.predict(asked.texts, forced=forced, user_id=user_id)
        if version is not None and answers.model_version != version:  # swapped meanwhile
            raise NotFoundError(
                f"model {name!r} has no version {version!r} any more: it was replaced while "
                f"this request waited (it serves {answers.model_version} now)"
            )
        assignment = answers.assignment
        parameters = {"variant": assignment.variant, "forced": assignment.forced}
        response = infer_response(
            name, answers.model_version, asked, answers.predictions, parameters
        )
        return JSONResponse(response, headers={"X-Model-Variant": assignment.variant})


def resolve(predictor: Predictor, experiment: str, name: str, version: str | None) -> str | None:
    """The variant a request for model ``name`` (at ``version``) is forced to, or None for the
    experiment's A/B routing; 404 naming what is served when nothing matches.

    The experiment's name wins over a variant of the same name."""
    models = dict(predictor.models)  # the catalog now (variants may be swapped at run time)
    if name == experiment:
        if version is None:
            return None
        forced = next((n for n, m in models.items() if m.version == version), None)
    elif name in models:
        forced = name if version in (None, models[name].version) else None
    else:
        raise NotFoundError(
            f"unknown model {name!r}: this server serves {experiment!r} (A/B routed) and its "
            f"variants {', '.join(repr(n) for n in models)}"
        )
    if forced is None:
        served = [m.version for n, m in models.items() if name in (experiment, n)]
        raise NotFoundError(
            f"model {name!r} has no version {version!r}: it serves {', '.join(served)}"
        )
    return forced
