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

    def __init__(
        self,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        if retry_after_s is not None:
            self.headers["Retry-After"] = str(retry_after_s)

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return error_body(self.status, self.kind, self.message)


class InvalidInputError(ServiceError):
    """Malformed or invalid request: bad JSON, wrong types, empty text, unknown variant."""

    status = 400
    kind = "invalid_input"


class UnauthorizedError(ServiceError):
    """An admin call without a valid bearer token, or (auth.require_keys) no API key in force."""

    status = 401
    kind = "unauthorized"


class ForbiddenError(ServiceError):
    """An admin call the service refuses whatever the token (no admin token configured), or an
    API key without the scope the route needs."""

    status = 403
    kind = "forbidden"


class NotFoundError(ServiceError):
    """No such route, or an id the service never issued."""

    status = 404
    kind = "not_found"


class MethodNotAllowedError(ServiceError):
    """A route called with a method it does not answer (Starlette's 405, in this shape)."""

    status = 405
    kind = "method_not_allowed"


class ConflictError(ServiceError):
    """A change based on an experiment state version that is no longer the newest."""

    status = 409
    kind = "conflict"


class PayloadTooLargeError(ServiceError):
    """The body or the batch is larger than the configured limit."""

    status = 413
    kind = "too_large"


class RateLimitedError(ServiceError):
    """An API key over its rate limit (service/ratelimit.py); retry after ``Retry-After``.

    Not in CONTRACT_ERRORS: another layer's 429 is BentoML's backstop ("overloaded")."""

    status = 429
    kind = "rate_limited"


class OverloadedError(ServiceError):
    """Admission control shed the request; the client should retry after ``Retry-After``."""

    status = 503
    kind = "overloaded"


class UnavailableError(ServiceError):
    """The worker cannot take requests yet (still starting); retry after ``Retry-After``."""

    status = 503
    kind = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class DeadlineError(ServiceError):
    """The prediction did not finish within the deadline."""

    status = 504
    kind = "deadline"


def error_body(status: int, kind: str, message: str) -> dict[str, Any]:
    """The one error shape."""
    return {"error": message, "kind": kind, "status": status}


# The one status-to-kind table, made from the classes: the kind each status of the error contract
# answers with, also when another layer (BentoML, Starlette) produced the status. A 503 from
# BentoML is its own overload backstop or a worker not ready, so "overloaded" (UnavailableError's
# "unavailable" is tuneserve's own); 415 and 422 are malformed input, 429 BentoML's backstop.
CONTRACT_ERRORS: tuple[type[ServiceError], ...] = (
    InvalidInputError,
    UnauthorizedError,
    ForbiddenError,
    NotFoundError,
    MethodNotAllowedError,
    ConflictError,
    PayloadTooLargeError,
    OverloadedError,
    DeadlineError,
)
KIND_BY_STATUS = {error.status: error.kind for error in CONTRACT_ERRORS} | {
    415: InvalidInputError.kind,
    422: InvalidInputError.kind,
    429: OverloadedError.kind,
}


def kind_for_status(status: int) -> str:
    """The error kind of a status another layer (BentoML, Starlette) answered with."""
    return KIND_BY_STATUS.get(status, "internal" if status >= 500 else InvalidInputError.kind)
