"""The service's OpenAPI 3.1 document: every endpoint, its bodies, answers and error codes."""

from __future__ import annotations

from typing import Any

from service.errors import (
    CONTRACT_ERRORS,
    ConflictError,
    DeadlineError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnavailableError,
)
from service.v2.openapi import SCHEMAS as V2_SCHEMAS
from service.v2.openapi import v2_paths

REPORT_FORMATS = ("json", "text", "html")
JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_STR = {"type": "string"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_NULL_STR = {"type": ["string", "null"]}
_NULL_NUM = {"type": ["number", "null"]}
_SHARES = {"type": "object", "additionalProperties": _NUM}
_ANY_OBJ = {"type": "object"}
_READY = {
    "type": "object",
    "required": ["ready", "store"],
    "properties": {
        "ready": _BOOL,
        "store": {"enum": ["up", "degraded"]},  # degraded: cannot be reached (feedback 503)
        "store_error": _STR,
        "store_down_s": _NUM,
    },
}

KINDS = sorted({e.kind for e in CONTRACT_ERRORS} | {UnavailableError.kind, "internal"})

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        **_obj(
            ["error", "kind", "status"],
            error={"type": "string", "description": "what was wrong, and how to fix it"},
            kind={"type": "string", "enum": KINDS},
            status={"type": "integer", "description": "the HTTP status, repeated"},
        ),
        "additionalProperties": False,
        "description": "The one error shape of every error answer.",
    },
    "Prediction": _obj(
        [
            "prediction_id",
            "variant",
            "model_version",
            "label",
            "score",
            "scores",
            "truncated",
            "forced",
        ],
        prediction_id={**_STR, "description": "the id to send feedback for"},
        variant={**_STR, "description": "the variant that served it"},
        model_version=_STR,
        label=_STR,
        score={**_NUM, "description": "the probability of the label"},
        scores={**_SHARES, "description": "label -> probability"},
        truncated={**_BOOL, "description": "the text was longer than the model takes"},
        forced={**_BOOL, "description": "the variant was forced (kept out of the statistics)"},
    ),
    "Batch": _obj(
        ["variant", "model_version", "predictions"],
        variant=_STR,
        model_version=_STR,
        predictions={"type": "array", "items": _ref("Prediction")},
    ),
    "FeedbackAnswer": _obj(
        ["prediction_id", "label", "status"],
        prediction_id=_STR,
        label={**_STR, "description": "the label stored (the first one sent for the id)"},
        status={"type": "string", "enum": ["stored", "duplicate"]},
    ),
    "Variant": _obj(
        [
            "name",
            "model_version",
            "export_run",
            "quantization",
            "provider",
            "labels",
            "max_tokens",
            "ready",
            "weight",
        ],
        name=_STR,
        model_version=_STR,
        export_run=_STR,
        train_run=_NULL_STR,
        train_method=_NULL_STR,
        base_model=_NULL_STR,
        base_model_fingerprint=_NULL_STR,
        adapter_sha256=_NULL_STR,
        head_sha256=_NULL_STR,
        profile=_NULL_STR,
        quantization=_STR,
        provider=_STR,
        labels={"type": "array", "items": _STR},
        max_tokens=_INT,
        dev_accuracy_at_export=_NULL_NUM,
        ready=_BOOL,
        weight={**_NUM, "description": "its share of the traffic now"},
    ),
    "Models": _obj(
        ["ready", "batching", "device", "control", "variants"],
        ready=_BOOL,
        batching=_STR,
        device=_STR,
        control=_STR,
        variants={"type": "array", "items": _ref("Variant")},
    ),
    "ExperimentConfig": _obj(
        ["weights", "salt", "coverage", "shadow", "disabled", "version", "control", "shares"],
        weights={**_SHARES, "description": "variant -> configured weight"},
        salt=_STR,
        coverage=_NUM,
        shadow=_obj(["variant", "share"], variant=_STR, share=_NUM),
        disabled={"type": "array", "items": _STR},
        origin=_STR,
        revision={**_INT, "description": "experiment.revision of the config it grew from"},
        version={**_INT, "description": "raised by one at every stored change"},
        control=_STR,
        shares={**_SHARES, "description": "variant -> share of the traffic now"},
    ),
    "ExperimentChange": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "description": "Some of these keys; the rest of the state stays as it is.",
        "properties": {
            "weights": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {"type": "number", "minimum": 0},
            },
            "salt": {"type": "string", "minLength": 1},
            "coverage": {"type": "number", "minimum": 0, "maximum": 1},
            "shadow": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "variant": {**_STR, "description": 'a variant, or "" for none'},
                    "share": {"type": "number", "minimum": 0, "maximum": 1},
                },
            },
            "disable": {"type": "array", "items": _STR},
            "enable": {"type": "array", "items": _STR},
            "version": {
                "type": "integer",
                "minimum": 1,
                "description": "the state version this change is based on (from GET "
                "/ab/config): applied only if it is still the newest, else 409; without it the "
                "change is applied to the newest state",
            },
        },
    },
    "Report": _obj(
        [
            "salt",
            "control",
            "coverage",
            "variants",
            "comparisons",
            "sample_ratio",
            "shadow",
            "guardrail_trips",
            "timeline",
        ],
        salt=_STR,
        control=_STR,
        coverage=_NUM,
        variants={"type": "array", "items": _ANY_OBJ},
        comparisons={"type": "array", "items": _ANY_OBJ},
        sample_ratio=_ANY_OBJ,
        shadow={"type": ["array", "object", "null"]},
        guardrail_trips={"type": "array", "items": _ANY_OBJ},
        timeline={"type": ["array", "object"]},
    ),
}

RETRY_AFTER = {
    "description": "seconds to wait before retrying (sent by tuneserve's own 503s; BentoML's "
    "backstop 429/503 cannot carry it)",
    "schema": {"type": "string"},
}


def _error(error: type[Exception] | str, description: str = "") -> dict[str, Any]:
    text = description or (error.__doc__ or "").strip().split("\n")[0]
    answer: dict[str, Any] = {
        "description": text,
        "content": {JSON: {"schema": _ref("Error")}},
    }
    if error is OverloadedError:
        answer["headers"] = {"Retry-After": RETRY_AFTER}
    if error is ConflictError:
        answer["headers"] = {"X-Experiment-Version": {
            "description": "the stored experiment state's version now", "schema": _STR,
        }}  # fmt: skip
    return answer


def _errors(*statuses: int) -> dict[str, Any]:
    """The error answers of an operation, by status."""
    table: dict[int, dict[str, Any]] = {
        400: _error(InvalidInputError),
        401: _error(UnauthorizedError),
        403: _error(ForbiddenError),
        404: _error(NotFoundError),
        409: _error(
            ConflictError,
            'the change named a "version" that is no longer the newest: the message names the '
            "current one (GET /ab/config, apply the change to it, send it again)",
        ),
        413: _error(PayloadTooLargeError),
        429: _error("429", "BentoML's own concurrency backstop (behind admission control)"),
        503: _error(
            OverloadedError,
            "admission control shed the request, or the worker is still starting or warming up",
        ),
        504: _error(DeadlineError),
    }
    return {str(status): table[status] for status in statuses}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": _STR}}}


_VARIANT_HEADER = {"X-Model-Variant": {"description": "the variant that served it",
                                       "required": True, "schema": _STR}}  # fmt: skip
_USER_HEADER = {
    "name": "X-User-Id",
    "in": "header",
    "required": False,
    "schema": _STR,
    "description": "the user id (the sticky A/B unit) when the body has none",
}
_POST_ERRORS = (400, 413, 429, 503)


def openapi_document(title: str, bodies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The document; ``bodies`` are the JSON schemas of the BentoML endpoints' request bodies."""

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {JSON: {"schema": bodies[name]}}}

    paths = {
        "/predict": {"post": {
            "summary": "Classify one text; the answer names the variant that served it.",
            "operationId": "predict", "parameters": [_USER_HEADER], "requestBody": body("predict"),
            "responses": {"200": _json(_ref("Prediction"), "the prediction",
                                       headers=_VARIANT_HEADER),
                          **_errors(*_POST_ERRORS, 504)}}},
        "/predict_batch": {"post": {
            "summary": "Classify several texts with one variant, answers in input order.",
            "operationId": "predict_batch", "parameters": [_USER_HEADER],
            "requestBody": body("predict_batch"),
            "responses": {"200": _json(_ref("Batch"), "the predictions", headers=_VARIANT_HEADER),
                          **_errors(*_POST_ERRORS, 504)}}},
        "/feedback": {"post": {
            "summary": "Record the true label of a prediction (stored before the answer).",
            "operationId": "feedback", "requestBody": body("feedback"),
            "responses": {"200": _json(_ref("FeedbackAnswer"), "stored, or a duplicate"),
                          **_errors(*_POST_ERRORS, 404)}}},
        "/models": {"get": {
            "summary": "Each variant's manifest summary and the serving settings.",
            "operationId": "models",
            "responses": {"200": _json(_ref("Models"), "the variants"), **_errors(503)}}},
        "/ab/report": {"get": {
            "summary": "The A/B report: traffic, accuracy, latency, tests, verdict.",
            "operationId": "ab_report",
            "parameters": [{"name": "format", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": list(REPORT_FORMATS),
                                       "default": "json"}}],
            "responses": {"200": {"description": "the report as JSON, plain text or a page",
                                  "content": {JSON: {"schema": _ref("Report")},
                                              "text/plain": {"schema": _STR},
                                              "text/html": {"schema": _STR}}},
                          **_errors(400, 503)}}},
        "/ab/config": {
            "get": {"summary": "The experiment state: weights, shares, salt, coverage, shadow.",
                    "operationId": "ab_config",
                    "responses": {"200": _json(_ref("ExperimentConfig"), "the state"),
                                  **_errors(503)}},
            "put": {"summary": "Change the experiment state (admin bearer token).",
                    "operationId": "ab_config_change", "security": [{"admin": []}],
                    "requestBody": {"required": True,
                                    "content": {JSON: {"schema": _ref("ExperimentChange")}}},
                    "responses": {"200": _json(_ref("ExperimentConfig"), "the new state"),
                                  **_errors(*_POST_ERRORS, 401, 403, 409)}}},
        "/livez": {"get": {"summary": "Alive (BentoML's liveness probe).", "operationId": "livez",
                           "responses": {"200": _text("text/plain", "alive"),
                                         **_errors(503)}}},
        "/healthz": {
            "get": {
                "summary": "Alive (BentoML's other name for /livez).",
                "operationId": "healthz",
                "responses": {"200": _text("text/plain", "alive"), **_errors(503)},
            }
        },
        "/readyz": {"get": {"summary": "Ready: every variant of every worker loaded and warm "
                                       "(the store's health in the body; degraded stays 200).",
                            "operationId": "readyz",
                            "responses": {"200": _json(_READY, "ready"), **_errors(503)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text format).",
                             "operationId": "metrics",
                             "responses": {"200": _text("text/plain", "the metrics")}}},
        "/docs.json": {"get": {"summary": "This document.", "operationId": "openapi",
                               "responses": {"200": _json(_ANY_OBJ, "OpenAPI 3.1")}}},
    }  # fmt: skip
    paths |= v2_paths()  # the Open Inference Protocol v2 (service/v2/)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": "tuneserve: a baseline and a tuned model behind one API with A/B "
            "routing. Every error answer has the Error shape (under /v2, the V2Error shape).",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS | V2_SCHEMAS,
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
        },
    }
