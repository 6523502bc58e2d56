"""The OpenAPI entries of the hot-swap admin API (service/swap.py): PUT and DELETE
/models/{name} and their bodies, added to the document service/openapi.py assembles."""

from __future__ import annotations

from typing import Any

from service.openapi import (
    _ANY_OBJ,
    _BOOL,
    _POST_ERRORS,
    _STR,
    JSON,
    _errors,
    _json,
    _key_error,
    _obj,
    _ref,
)  # fmt: skip
from service.scopes import document_access

SWAP_SCHEMAS: dict[str, dict[str, Any]] = {
    "ModelChange": {
        **_obj(
            ["path"],
            path={**_STR, "minLength": 1, "description": "export run directory on the server"},
            sha256={
                **_STR,
                "minLength": 1,
                "description": "expected sha256 of its serving model (else 422)",
            },
            model_version={
                **_STR,
                "minLength": 1,
                "description": "expected model_version (else 422)",
            },
        ),
        "additionalProperties": False,
    },
    "ModelSwap": _obj(
        ["variant"],
        variant=_STR,
        model_version={**_STR, "description": "the version now served by this worker"},
        changed={**_BOOL, "description": "false: that version was served already"},
        removed=_BOOL,
        catalog=_ANY_OBJ,
    ),
}


def swap_paths() -> dict[str, Any]:
    """The hot-swap operations (service/swap.py): PUT and DELETE /models/{name}."""
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,31}$"}}  # fmt: skip
    answer = _json(_ref("ModelSwap"), "switched on this worker; the others follow the catalog")
    return {"/models/{name}": {
        "put": {"summary": "Add or replace a variant's model at runtime (admin bearer token): "
                           "verified, loaded and warmed before the switch; a new one has weight 0.",
                "operationId": "model_put", "security": [{"admin": []}], "parameters": [name],
                "requestBody": {"required": True,
                                "content": {JSON: {"schema": _ref("ModelChange")}}},
                "responses": {"200": answer, **_errors(*_POST_ERRORS, 401, 403, 409, 422)}},
        "delete": {"summary": "Remove a variant at runtime (admin): not the control, nor one "
                              "with weight or the shadow (409).",
                   "operationId": "model_delete", "security": [{"admin": []}],
                   "parameters": [name],
                   "responses": {"200": answer, **_errors(401, 403, 404, 409, 503)}},
    }}  # fmt: skip


def add_swap_operations(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the hot-swap paths and schemas in it (and their API-key answers)."""
    document["paths"] |= document_access(swap_paths(), _key_error)
    document["components"]["schemas"] = document["components"]["schemas"] | SWAP_SCHEMAS
    return document
