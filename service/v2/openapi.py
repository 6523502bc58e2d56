"""The v2 protocol's part of the OpenAPI document: its paths, their answers, the v2 error shape."""

from __future__ import annotations

from typing import Any

from service.v2.tensors import INPUT_NAME, OUTPUTS

JSON = "application/json"
_STR = {"type": "string"}
_SCALAR = {"type": ["string", "number", "boolean"]}
_PARAMETERS = {"type": "object", "additionalProperties": _SCALAR}
_SHAPE = {"type": "array", "items": {"type": "integer"}}
_DATA: dict[str, Any] = {"type": "array", "items": {}}  # flat, or nested as the shape


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _closed(**properties: Any) -> dict[str, Any]:
    """An object of only these (optional) keys."""
    return {**_obj([], **properties), "additionalProperties": False}


_TENSOR = _obj(["name", "datatype", "shape"], name=_STR, datatype=_STR, shape=_SHAPE)
SCHEMAS: dict[str, dict[str, Any]] = {
    "V2Error": {
        **_obj(["error"], error={**_STR, "description": "what was wrong, and how to fix it"}),
        "additionalProperties": False,
        "description": "The v2 protocol's error shape, of every error answer under /v2 (the "
        "status and headers are those of the service's error table).",
    },
    "V2ServerMetadata": _obj(
        ["name", "version", "extensions"],
        name=_STR,
        version=_STR,
        extensions={"type": "array", "items": _STR},
    ),
    "V2ModelMetadata": _obj(
        ["name", "platform", "inputs", "outputs"],
        name=_STR,
        versions={"type": "array", "items": _STR},
        platform=_STR,
        inputs={"type": "array", "items": _TENSOR},
        outputs={"type": "array", "items": _TENSOR},
    ),
    "V2InferenceRequest": {
        **_obj(
            ["inputs"],
            id={**_STR, "description": "echoed in the answer"},
            parameters=_closed(
                user_id={**_STR, "description": "the sticky A/B unit (else X-User-Id)"},
                binary_data_output={"type": "boolean", "description": "answered as JSON"},
            ),
            inputs={
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    **_obj(
                        ["name", "shape", "datatype", "data"],
                        name={"const": INPUT_NAME},
                        shape={**_SHAPE, "minItems": 1, "maxItems": 2},
                        datatype={"const": "BYTES"},
                        parameters=_closed(content_type={"const": "str"}),
                        data={**_DATA, "description": "the texts, flat or as [[text], ...]"},
                    ),
                    "additionalProperties": False,
                },
            },
            outputs={
                "type": "array",
                "description": "the outputs to answer with (all when left out)",
                "items": {
                    **_obj(
                        ["name"],
                        name={"enum": list(OUTPUTS)},
                        parameters=_closed(binary_data={"type": "boolean"}),
                    ),
                    "additionalProperties": False,
                },
            },
        ),
        "additionalProperties": False,
    },
    "V2InferenceResponse": _obj(
        ["model_name", "model_version", "parameters", "outputs"],
        model_name=_STR,
        model_version={**_STR, "description": "the version of the variant that answered"},
        id=_STR,
        parameters={
            **_PARAMETERS,
            "description": "variant: the variant that answered; forced: whether it was named",
        },
        outputs={
            "type": "array",
            "items": _obj(
                ["name", "datatype", "shape", "data"],
                name=_STR,
                datatype=_STR,
                shape=_SHAPE,
                data=_DATA,
            ),
        },
    ),
}

RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": _STR}
_WHEN = {
    400: "malformed request: not a v2 inference request of one BYTES input 'text', empty text, "
    "a wrong datatype or shape, an unknown output or parameter, binary tensor data",
    404: "unknown model name, or a version the model does not serve now",
    413: "body over limits.max_body_bytes, or more than limits.max_batch_texts texts",
    429: "BentoML's own concurrency backstop (behind admission control)",
    503: "not ready (starting, warming up), not live, or admission control shed the request",
    504: "the prediction did not finish within limits.deadline_ms",
}


def _errors(*statuses: int) -> dict[str, Any]:
    answers = {}
    for status in statuses:
        answer = {"description": _WHEN[status], "content": {JSON: {"schema": _ref("V2Error")}}}
        if status == 503:
            answer["headers"] = {"Retry-After": RETRY_AFTER}
        answers[str(status)] = answer
    return answers


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _path_parameters(versioned: bool) -> list[dict[str, Any]]:
    names = {"name": "the experiment's name (A/B routed) or a variant's name (forced)"}
    if versioned:
        names["version"] = "a model version the name serves now (GET /v2/models/{name})"
    return [
        {"name": n, "in": "path", "required": True, "schema": _STR, "description": d}
        for n, d in names.items()
    ]


_USER_HEADER = {
    "name": "X-User-Id",
    "in": "header",
    "required": False,
    "schema": _STR,
    "description": "the sticky A/B unit when parameters.user_id is not given",
}
_VARIANT_HEADER = {
    "X-Model-Variant": {
        "description": "the variant that answered",
        "required": True,
        "schema": _STR,
    }
}
_READY = _obj(["name", "ready"], name=_STR, ready={"const": True})


def v2_paths() -> dict[str, Any]:
    """The protocol's paths for the service's OpenAPI document."""
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "v2 server metadata: name, version, extensions.",
                "operationId": "v2_server_metadata",
                "responses": {"200": _json(_ref("V2ServerMetadata"), "the server")},
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "v2 server live (as /livez).",
                "operationId": "v2_live",
                "responses": {
                    "200": _json(_obj(["live"], live={"const": True}), "alive"),
                    **_errors(503),
                },
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "v2 server ready (as /readyz).",
                "operationId": "v2_ready",
                "responses": {
                    "200": _json(_obj(["ready"], ready={"const": True}), "ready"),
                    **_errors(503),
                },
            }
        },
    }
    for versioned in (False, True):
        model = "/v2/models/{name}" + ("/versions/{version}" if versioned else "")
        suffix = "_version" if versioned else ""
        parameters = _path_parameters(versioned)
        paths[model] = {
            "get": {
                "summary": "v2 model metadata: one BYTES input, the outputs, the versions served.",
                "operationId": f"v2_model_metadata{suffix}",
                "parameters": parameters,
                "responses": {
                    "200": _json(_ref("V2ModelMetadata"), "the model"),
                    **_errors(404, 503),
                },
            }
        }
        paths[f"{model}/ready"] = {
            "get": {
                "summary": "v2 model ready.",
                "operationId": f"v2_model_ready{suffix}",
                "parameters": parameters,
                "responses": {"200": _json(_READY, "ready"), **_errors(404, 503)},
            }
        }
        paths[f"{model}/infer"] = {
            "post": {
                "summary": "v2 inference: label, score, prediction_id, truncated per text, "
                "from one variant.",
                "operationId": f"v2_infer{suffix}",
                "parameters": [*parameters, _USER_HEADER],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("V2InferenceRequest")}},
                },
                "responses": {
                    "200": _json(
                        _ref("V2InferenceResponse"), "the outputs", headers=_VARIANT_HEADER
                    ),
                    **_errors(400, 404, 413, 429, 503, 504),
                },
            }
        }
    return paths
