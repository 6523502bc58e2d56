"""The one scope table: which API-key scope each route needs, and how the OpenAPI document says so.

A request needs the scope of the first row matching its method and path; ``public`` rows need
no key; ``any`` rows (model metadata) take a key of any scope. A path in no row needs ``admin``,
the strictest, so a route added without a row is never open. The admin scope includes every
other, and the admin token counts as a key with the admin scope.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

PUBLIC = "public"
ANY = "any"
ADMIN = "admin"
DEFAULT_SCOPE = ADMIN

# (method, path pattern, scope); {name} matches one path segment, a trailing /* any rest.
# Rows for routes of issue 16's other points (rollout, hot swap, Open Inference Protocol v2)
# are here already, so those routes are covered the moment they are served.
SCOPE_TABLE: tuple[tuple[str, str, str], ...] = (
    # probes, metrics and the documentation: never a key
    ("GET", "/livez", PUBLIC),
    ("GET", "/healthz", PUBLIC),
    ("GET", "/readyz", PUBLIC),
    ("GET", "/metrics", PUBLIC),
    ("GET", "/docs.json", PUBLIC),
    ("GET", "/", PUBLIC),  # BentoML's Swagger UI page
    ("GET", "/schema.json", PUBLIC),
    ("GET", "/static_content/*", PUBLIC),
    ("GET", "/v2/health/live", PUBLIC),
    ("GET", "/v2/health/ready", PUBLIC),
    # predictions
    ("POST", "/predict", "predict"),
    ("POST", "/predict_batch", "predict"),
    ("POST", "/v2/models/{name}/infer", "predict"),
    ("POST", "/v2/models/{name}/versions/{version}/infer", "predict"),
    ("POST", "/feedback", "feedback"),
    # model metadata: what a client of any scope needs to know
    ("GET", "/models", ANY),
    ("GET", "/v2", ANY),
    ("GET", "/v2/models/{name}", ANY),
    ("GET", "/v2/models/{name}/ready", ANY),
    ("GET", "/v2/models/{name}/versions/{version}", ANY),
    ("GET", "/v2/models/{name}/versions/{version}/ready", ANY),
    # the experiment: read by report keys, changed by admin
    ("GET", "/ab/report", "report"),
    ("GET", "/ab/config", "report"),
    ("GET", "/ab/rollout", "report"),
    ("PUT", "/ab/config", ADMIN),
    ("PUT", "/ab/rollout", ADMIN),
    ("PUT", "/models/{name}", ADMIN),
    ("DELETE", "/models/{name}", ADMIN),
)


def _pattern(path: str) -> re.Pattern[str]:
    regex = re.escape(path).replace(r"/\*", "/.*")
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", regex) + "$")


_EXACT = {(m, p): s for m, p, s in SCOPE_TABLE if "{" not in p and "*" not in p}
_PATTERNS = [(m, _pattern(p), s) for m, p, s in SCOPE_TABLE if "{" in p or "*" in p]


@lru_cache(maxsize=1024)
def _matched(method: str, path: str) -> str | None:
    for row_method, pattern, scope in _PATTERNS:
        if row_method == method and pattern.match(path):
            return scope
    return None


def scope_for(method: str, path: str) -> str:
    """The scope ``method path`` needs (HEAD as GET; unknown routes: ``admin``)."""
    if method == "HEAD":
        method = "GET"
    scope = _EXACT.get((method, path))
    if scope is not None:
        return scope
    return _matched(method, path) or DEFAULT_SCOPE


def allows(granted: frozenset[str], needed: str) -> bool:
    """Whether a key with ``granted`` scopes may call a route that needs ``needed``."""
    if needed == PUBLIC or ADMIN in granted or needed in granted:
        return True
    return needed == ANY and bool(granted)


# The OpenAPI side: every operation that needs a key says so, with its 401/403/429 answers.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "an API key (ts_...) or the admin token"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "an API key (ts_...)"},
}  # fmt: skip
_RATE_HEADERS = {
    name: {"description": text, "schema": {"type": "integer"}}
    for name, text in (
        ("RateLimit-Limit", "requests the key's bucket holds (in this worker)"),
        ("RateLimit-Remaining", "requests left now"),
        ("RateLimit-Reset", "seconds until the bucket is full again"),
    )
}


def document_access(
    paths: dict[str, Any], error: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """``paths`` with, on each operation that needs a key when ``auth.require_keys`` is on,
    its scope (``x-scope``), the key schemes as optional security (keys are off by default) and
    the 401, 403 and 429 answers (``error(description)`` makes each in the Error shape)."""
    refused = {
        "401": error("auth.require_keys is on and the request has no key in force "
                     "(missing, unknown or revoked; Authorization: Bearer or X-API-Key)"),
        "403": error("the key lacks the scope the route needs (x-scope)"),
        "429": error("the key's rate limit (Retry-After: seconds to wait), or BentoML's "
                     "own concurrency backstop"),
    }  # fmt: skip
    refused["429"]["headers"] = {
        "Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}},
        **_RATE_HEADERS,
    }
    out: dict[str, Any] = {}
    for path, operations in paths.items():
        out[path] = {}
        for method, operation in operations.items():
            scope = scope_for(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
            if scope == PUBLIC:
                out[path][method] = operation
                continue
            # optional ({}) while keys are off, but never for admin operations (the admin token)
            security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
            if operation.get("security") == [{"admin": []}]:
                security = [{"admin": []}, *security]
            else:
                security.append({})
            responses = {"401": refused["401"], "403": refused["403"], **operation["responses"],
                         "429": refused["429"]}  # the admin token's own 401/403 kept  # fmt: skip
            out[path][method] = {**operation, "x-scope": scope, "security": security,
                                 "responses": responses}  # fmt: skip
    return out
