"""The BentoML service: its endpoints, their one error path, and its OpenAPI document.

POST /predict, /predict_batch, /feedback; GET /models, /ab/report, /docs.json; GET and PUT
/ab/config; BentoML's own /livez and /metrics, and /readyz (with the store's health in its body
once ready); the Open Inference Protocol v2 under /v2 (service/v2/).

Start it with ``bentoml serve service.app:Tuneserve`` (or ``make serve``). The serving config is
read when this module is imported, from ``$TUNESERVE_SERVING_CONFIG`` or configs/serving.toml, and
every variant's export manifest is checked (hashes included) right then, so a broken config or a
corrupt model stops ``bentoml serve`` before any worker starts.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar, cast

import anyio
import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from service.config import ServingConfig, load_serving_config
from service.dialect import is_url
from service.errors import InvalidInputError, ServiceError, UnavailableError
from service.experiment.changes import check_token
from service.health import HEALTH
from service.ids import load_key
from service.logs import install_request_text_filter, install_service_logging
from service.middleware import GuardMiddleware
from service.model import read_export
from service.openapi import REPORT_FORMATS, openapi_document
from service.pool import StoreUnavailableError
from service.predictor import Predictor
from service.report import build_report, format_report
from service.report_page import render_page
from service.v2 import V2Api, V2ErrorShape
from service.validation import MAX_USER_ID_CHARS, check_text, check_texts, check_user_id
from service.workers import all_live_workers_ready, all_workers_alive
from tuneserve.errors import TuneserveError


def _checked_settings() -> ServingConfig:
    """The serving config with every variant's manifest and hashes checked, or exit 1 saying why."""
    try:
        settings = load_serving_config()
        for variant in settings.variants:
            read_export(variant.path)
        # made here, in the main process, so every worker reads the same key
        experiment, shared = settings.experiment, is_url(settings.store.location())
        load_key(experiment.id_key_env, experiment.id_key_file, shared=shared)
    except TuneserveError as exc:
        print(f"tuneserve: cannot serve: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return settings


SETTINGS = _checked_settings()


def error_response(_: Request, exc: Exception) -> Response:
    """The one error answer: the error's status, headers and JSON shape (service/errors.py)."""
    error = exc if isinstance(exc, ServiceError) else ServiceError("internal error")
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def store_unavailable_response(request: Request, _: Exception) -> Response:
    """A store that cannot be reached, wherever it was needed (the report, the admin API): 503."""
    retry_after_s = SETTINGS.store.retry_after_s
    message = f"the experiment store cannot be reached right now; retry after {retry_after_s} s"
    return error_response(request, UnavailableError(message, retry_after_s=retry_after_s))


# The one exception-handler table: the mounted app's routes raise and Starlette answers from it;
# the BentoML endpoints, which BentoML would answer with a 500, answer from it by
# ``answers_errors``. Errors of other layers (BentoML's validation, Starlette's 404/405) are put
# into the same shape by service/middleware.py.
ERROR_HANDLERS: dict[Any, Callable[[Request, Exception], Response]] = {
    ServiceError: error_response,
    StoreUnavailableError: store_unavailable_response,
}

P = ParamSpec("P")
R = TypeVar("R")


def answers_errors(endpoint: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | Response]]:
    """A BentoML endpoint (with a ``ctx`` parameter) that answers the exceptions of
    ERROR_HANDLERS from that table, as the mounted app does."""

    @functools.wraps(endpoint)
    async def answered(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        try:
            return await endpoint(*args, **kwargs)
        except tuple(ERROR_HANDLERS) as exc:
            ctx = cast(bentoml.Context, kwargs["ctx"])  # BentoML passes it by name
            handler = next(h for t, h in ERROR_HANDLERS.items() if isinstance(exc, t))
            response = handler(ctx.request, exc)
            ctx.response.status_code = response.status_code  # BentoML answers with this status
            return response

    return answered


def _predictor(request: Request) -> Predictor:
    """The worker's Predictor, set on the mounted app once BentoML has built the service."""
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise UnavailableError(
            "the service is still starting; retry shortly",
            retry_after_s=SETTINGS.limits.retry_after_s,
        )
    return predictor


def _user_id(ctx: bentoml.Context, user_id: str | None) -> str | None:
    """The sticky A/B unit: the body's user id, else the X-User-Id header (checked)."""
    return check_user_id(ctx.request.headers.get(USER_ID_HEADER) if user_id is None else user_id)


USER_ID_HEADER = "X-User-Id"
# What the checks of the endpoints accept, told to the OpenAPI document only (json_schema_extra
# does not validate): the checks give the clearer messages, so they stay the validation.
SOME_TEXT = {"pattern": r"\S"}  # not empty, not only whitespace
UserId = Annotated[
    str | None,
    Field(
        description="the caller's user id, the sticky A/B unit (or the X-User-Id header)",
        json_schema_extra={**SOME_TEXT, "maxLength": MAX_USER_ID_CHARS},
    ),
]
ForcedVariant = Annotated[
    str | None,
    Field(
        description="force this variant (QA); kept out of the A/B statistics",
        json_schema_extra={"enum": [*SETTINGS.variant_names(), None]},
    ),
]
Text = Annotated[str, Field(description="the text to classify", json_schema_extra=SOME_TEXT)]
Texts = Annotated[
    list[Any],
    Field(
        description="the texts to classify, in order",
        json_schema_extra={
            "items": {"type": "string", **SOME_TEXT},
            "minItems": 1,
            "maxItems": SETTINGS.limits.max_batch_texts,
        },
    ),
]


async def _models(request: Request) -> JSONResponse:
    return JSONResponse(_predictor(request).summary())


async def _ab_report(request: Request) -> Response:
    predictor = _predictor(request)
    form = request.query_params.get("format", "json")
    if form not in REPORT_FORMATS:
        raise InvalidInputError("format must be json, text or html")
    loop = asyncio.get_running_loop()
    report = await loop.run_in_executor(None, build_report, predictor.store, predictor.settings)
    if form == "text":
        return PlainTextResponse(format_report(report) + "\n")
    if form == "html":
        return HTMLResponse(render_page(report))
    return JSONResponse(report)


async def _ab_config(request: Request) -> Response:
    predictor = _predictor(request)
    if request.method == "GET":
        return JSONResponse(predictor.experiment.summary())
    check_token(request.headers.get("authorization"), predictor.settings.admin_token_env)
    try:
        body = await request.json()
    except ValueError:
        raise InvalidInputError("the body is not valid JSON") from None
    loop = asyncio.get_running_loop()
    return JSONResponse(await loop.run_in_executor(None, predictor.experiment.change, body))


async def _openapi(_: Request) -> JSONResponse:
    return JSONResponse(_document())


@functools.cache
def _document() -> dict[str, Any]:
    bodies = {name: api.input_spec.model_json_schema() for name, api in _apis().items()}
    return openapi_document(SETTINGS.name, bodies)


routes = Starlette(
    routes=[
        Route("/models", _models, methods=["GET"]),
        Route("/ab/report", _ab_report, methods=["GET"]),
        Route("/ab/config", _ab_config, methods=["GET", "PUT"]),
        # served here, it shadows BentoML's own /docs.json (which lists no mounted route)
        Route("/docs.json", _openapi, methods=["GET"]),
        *V2Api(SETTINGS, is_live=lambda p: _is_alive(p), is_ready=lambda p: _is_ready(p)).routes(),
    ],
    exception_handlers=ERROR_HANDLERS,
)


@bentoml.service(
    name=SETTINGS.name,
    workers=SETTINGS.workers,
    threads=SETTINGS.threads,
    # BentoML's own limits are a backstop behind tuneserve's deadline and admission control
    # (its 503/504 cannot carry Retry-After), so they are set well past them.
    traffic={
        "timeout": SETTINGS.backstop_timeout_s,
        "max_concurrency": SETTINGS.backstop_concurrency(),
    },
    logging={"access": {"enabled": SETTINGS.access_log}},
)
@bentoml.asgi_app(routes, path="/")
class Tuneserve:
    """Serves every configured variant of the experiment."""

    def __init__(self) -> None:
        install_request_text_filter()
        install_service_logging()
        self.predictor = Predictor(SETTINGS)
        routes.state.predictor = self.predictor
        self.predictor.start_warm_up()

    def __is_ready__(self) -> bool:
        return _is_ready(self.predictor)

    def __is_alive__(self) -> bool:
        return _is_alive(self.predictor)

    @bentoml.on_shutdown
    async def _close(self) -> None:
        await self.predictor.close()

    @bentoml.api(route="/predict")
    @answers_errors
    async def predict(
        self,
        ctx: bentoml.Context,
        text: Text,
        user_id: UserId = None,
        variant: ForcedVariant = None,
    ) -> dict[str, Any]:
        """Classify one text. The answer names the variant that served it."""
        texts = [check_text(text)]
        answers = await self.predictor.predict(
            texts, forced=variant, user_id=_user_id(ctx, user_id)
        )
        answer = answers.predictions[0]
        ctx.response.metadata["X-Model-Variant"] = answer["variant"]
        return answer

    @bentoml.api(route="/predict_batch")
    @answers_errors
    async def predict_batch(
        self,
        ctx: bentoml.Context,
        texts: Texts,
        user_id: UserId = None,
        variant: ForcedVariant = None,
    ) -> dict[str, Any]:
        """Classify several texts with one variant; answers come back in input order."""
        checked = check_texts(texts, SETTINGS.limits.max_batch_texts)
        answers = await self.predictor.predict(
            checked, forced=variant, user_id=_user_id(ctx, user_id)
        )
        ctx.response.metadata["X-Model-Variant"] = answers.variant
        return {
            "variant": answers.variant,
            "model_version": answers.model_version,
            "predictions": answers.predictions,
        }

    @bentoml.api(route="/feedback")
    @answers_errors
    async def feedback(
        self,
        ctx: bentoml.Context,
        prediction_id: Annotated[str, Field(description="the id a prediction answered with")],
        label: Annotated[str, Field(description="the true label (one of the model's labels)")],
    ) -> dict[str, Any]:
        """Record the true label of a prediction; stored before this answer is sent.

        The first label stored for an id wins; repeating it changes nothing
        (``status: duplicate`` with the label kept)."""
        return await self.predictor.feedback(prediction_id, label)


def _is_alive(predictor: Predictor) -> bool:
    # also false when a sibling worker died and BentoML will not replace it (service/workers.py)
    return predictor.warmup_error is None and all_workers_alive(SETTINGS.workers)


def _is_ready(predictor: Predictor) -> bool:
    # and no sibling worker still warming up: it would answer 503 (service/workers.py)
    return predictor.ready and all_live_workers_ready()


class ReadinessBody:
    """ASGI middleware: a ready worker answers GET /readyz itself, 200 with the store's health
    in a JSON body, ``{"ready": true, "store": "up"}`` or ``{"ready": true, "store":
    "degraded", "store_error": kind, "store_down_s": s}``: readiness does not depend on the
    store, since predictions do not (README, "Running on Kubernetes"). A worker not ready leaves
    /readyz to BentoML (503)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz" and scope["method"] == "GET":
            predictor = getattr(routes.state, "predictor", None)
            # anyio's threads, as BentoML's own readiness check: not the default executor that
            # feedback waits in (an outage must not slow the probe)
            if predictor is not None and await anyio.to_thread.run_sync(_is_ready, predictor):
                await JSONResponse({"ready": True} | HEALTH.status())(scope, receive, send)
                return
        await self.app(scope, receive, send)


# The decorator made Tuneserve a bentoml Service (typed as the class it wraps). The first added
# is the outermost: the v2 error shape, so the errors of every later layer leave /v2 in it.
cast(Any, Tuneserve).add_asgi_middleware(V2ErrorShape)
cast(Any, Tuneserve).add_asgi_middleware(GuardMiddleware, limits=SETTINGS.limits)
cast(Any, Tuneserve).add_asgi_middleware(ReadinessBody)


def _apis() -> dict[str, Any]:
    """The BentoML endpoints by name (their input models are the request-body schemas)."""
    return cast(Any, Tuneserve).apis
