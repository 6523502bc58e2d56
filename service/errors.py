"""HTTP errors of the service: each carries its status, a kind, and one JSON shape for the body.

The shape is ``{"error": message, "kind": kind, "status": status}``. BentoML's own backstop answers
(its 503 and 504) carry ``{"error": message}``, the same key, so clients read ``body["error"]``
everywhere.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An expected failure answered with ``status``; the message is safe to show to clients."""

    status = 500
    kind = "internal"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return error_body(self.status, self.kind, self.message)


class InvalidInputError(ServiceError):
    """Malformed or invalid request: bad JSON, wrong types, empty text, unknown variant."""

    status = 400
    kind = "invalid_input"


class UnauthorizedError(ServiceError):
    """An admin call without a valid bearer token."""

    status = 401
    kind = "unauthorized"


class ForbiddenError(ServiceError):
    """An admin call the service refuses whatever the token (no admin token configured)."""

    status = 403
    kind = "forbidden"


class NotFoundError(ServiceError):
    """No such route, or an id the service never issued."""

    status = 404
    kind = "not_found"


class PayloadTooLargeError(ServiceError):
    """The body or the batch is larger than the configured limit."""

    status = 413
    kind = "too_large"


class OverloadedError(ServiceError):
    """Admission control shed the request; the client should retry after ``Retry-After``."""

    status = 503
    kind = "overloaded"


class DeadlineError(ServiceError):
    """The prediction did not finish within the deadline."""

    status = 504
    kind = "deadline"


def error_body(status: int, kind: str, message: str) -> dict[str, Any]:
    """The one error shape."""
    return {"error": message, "kind": kind, "status": status}


KIND_BY_STATUS = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "invalid_input",
    422: "invalid_input",
    429: "overloaded",
    503: "overloaded",
    504: "deadline",
}


def kind_for_status(status: int) -> str:
    """The error kind of a status another layer (BentoML, Starlette) answered with."""
    return KIND_BY_STATUS.get(status, "internal" if status >= 500 else "invalid_input")
