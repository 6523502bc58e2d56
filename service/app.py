"""The BentoML service: POST /predict and /predict_batch, GET /models, /livez, /readyz, /metrics.

Start it with ``bentoml serve service.app:Tuneserve`` (or ``make serve``). The serving config is
read when this module is imported, from ``$TUNESERVE_SERVING_CONFIG`` or configs/serving.toml, and
every variant's export manifest is checked (hashes included) right then, so a broken config or a
corrupt model stops ``bentoml serve`` before any worker starts.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any, cast

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from service.config import ServingConfig, load_serving_config
from service.errors import InvalidInputError, NotFoundError, ServiceError
from service.experiment.changes import check_token
from service.ids import load_key
from service.logs import install_request_text_filter, install_service_logging
from service.middleware import GuardMiddleware
from service.model import read_export
from service.predictor import Predictor
from service.report import build_report, format_report
from service.report_page import render_page
from service.validation import check_text, check_texts, check_user_id
from service.workers import all_live_workers_ready, all_workers_alive
from tuneserve.errors import TuneserveError


def _checked_settings() -> ServingConfig:
    """The serving config with every variant's manifest and hashes checked, or exit 1 saying why."""
    try:
        settings = load_serving_config()
        for variant in settings.variants:
            read_export(variant.path)
        # made here, in the main process, so every worker reads the same key
        load_key(settings.experiment.id_key_env, settings.experiment.id_key_file)
    except TuneserveError as exc:
        print(f"tuneserve: cannot serve: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return settings


SETTINGS = _checked_settings()


def _error_response(error: ServiceError, ctx: Any = None) -> JSONResponse:
    if ctx is not None:  # BentoML sets the status of an endpoint taking a context from it
        ctx.response.status_code = error.status
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _predictor(request: Request) -> Predictor:
    """The worker's Predictor, set on the mounted app once BentoML has built the service."""
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise NotFoundError("the service is still starting")
    return predictor


async def _models(request: Request) -> JSONResponse:
    try:
        return JSONResponse(_predictor(request).summary())
    except ServiceError as error:
        return _error_response(error)


USER_ID_HEADER = "X-User-Id"
UserId = Annotated[
    str | None,
    Field(description="the caller's user id, the sticky A/B unit (or the X-User-Id header)"),
]
ForcedVariant = Annotated[
    str | None, Field(description="force this variant (QA); kept out of the A/B statistics")
]


async def _ab_report(request: Request) -> Response:
    try:
        predictor = _predictor(request)
    except ServiceError as error:
        return _error_response(error)
    loop = asyncio.get_running_loop()
    report = await loop.run_in_executor(None, build_report, predictor.store, predictor.settings)
    form = request.query_params.get("format", "json")
    if form == "text":
        return PlainTextResponse(format_report(report) + "\n")
    if form == "html":
        return HTMLResponse(render_page(report))
    if form != "json":
        return _error_response(InvalidInputError("format must be json, text or html"))
    return JSONResponse(report)


async def _ab_config(request: Request) -> Response:
    try:
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
    except ServiceError as error:
        return _error_response(error)


routes = Starlette(
    routes=[
        Route("/models", _models, methods=["GET"]),
        Route("/ab/report", _ab_report, methods=["GET"]),
        Route("/ab/config", _ab_config, methods=["GET", "PUT"]),
    ]
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
        # and no sibling worker still warming up: it would answer 503 (service/workers.py)
        return self.predictor.ready and all_live_workers_ready()

    def __is_alive__(self) -> bool:
        # also false when a sibling worker died and BentoML will not replace it (service/workers.py)
        return self.predictor.warmup_error is None and all_workers_alive(SETTINGS.workers)

    @bentoml.on_shutdown
    async def _close(self) -> None:
        await self.predictor.close()

    @bentoml.api(route="/predict")
    async def predict(
        self,
        ctx: bentoml.Context,
        text: Annotated[str, Field(description="the text to classify")],
        user_id: UserId = None,
        variant: ForcedVariant = None,
    ) -> dict[str, Any]:
        """Classify one text. The answer names the variant that served it."""
        try:
            texts = [check_text(text)]
            unit = check_user_id(
                ctx.request.headers.get(USER_ID_HEADER) if user_id is None else user_id
            )
            answers = await self.predictor.predict(texts, forced=variant, user_id=unit)
        except ServiceError as error:
            return _error_response(error, ctx)  # type: ignore[return-value]
        answer = answers.predictions[0]
        return JSONResponse(answer, headers={"X-Model-Variant": answer["variant"]})  # type: ignore[return-value]

    @bentoml.api(route="/predict_batch")
    async def predict_batch(
        self,
        ctx: bentoml.Context,
        texts: Annotated[list[Any], Field(description="the texts to classify, in order")],
        user_id: UserId = None,
        variant: ForcedVariant = None,
    ) -> dict[str, Any]:
        """Classify several texts with one variant; answers come back in input order."""
        try:
            checked = check_texts(texts, SETTINGS.limits.max_batch_texts)
            unit = check_user_id(
                ctx.request.headers.get(USER_ID_HEADER) if user_id is None else user_id
            )
            answers = await self.predictor.predict(checked, forced=variant, user_id=unit)
        except ServiceError as error:
            return _error_response(error, ctx)  # type: ignore[return-value]
        body = {
            "variant": answers.variant,
            "model_version": answers.model_version,
            "predictions": answers.predictions,
        }
        return JSONResponse(body, headers={"X-Model-Variant": answers.variant})  # type: ignore[return-value]

    @bentoml.api(route="/feedback")
    async def feedback(
        self,
        ctx: bentoml.Context,
        prediction_id: Annotated[str, Field(description="the id a prediction answered with")],
        label: Annotated[str, Field(description="the true label (one of the model's labels)")],
    ) -> dict[str, Any]:
        """Record the true label of a prediction; stored before this answer is sent.

        The first label stored for an id wins; repeating it changes nothing
        (``status: duplicate`` with the label kept)."""
        try:
            body = await self.predictor.feedback(prediction_id, label)
        except ServiceError as error:
            return _error_response(error, ctx)  # type: ignore[return-value]
        return JSONResponse(body)  # type: ignore[return-value]


# The decorator made Tuneserve a bentoml Service (typed as the class it wraps).
cast(Any, Tuneserve).add_asgi_middleware(GuardMiddleware, limits=SETTINGS.limits)
