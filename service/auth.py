"""ASGI middleware: API keys, their scopes and their rate limits, in front of every route.

Off unless ``auth.require_keys`` (then every request passes straight through, one branch).
On, each request needs the scope its route has in the one table (service/scopes.py): a key in
``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (or the admin token, which has the admin
scope), else 401; a key without the scope, 403; a key over its rate limit, 429 with
Retry-After (service/ratelimit.py). Every answer to a key carries the RateLimit-* headers and is
counted in ``tuneserve_key_requests_total`` by key id. Neither a key nor a key's name is ever
logged, echoed or used as a label: only its id.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from service import metrics
from service.apikeys import KeyCache, hash_key, key_id
from service.config import ServingConfig
from service.errors import (
    ForbiddenError,
    RateLimitedError,
    ServiceError,
    UnauthorizedError,
    UnavailableError,
)
from service.experiment.changes import check_token
from service.middleware import ASGIApp, Message, Receive, Scope, Send, send_error
from service.pool import PoolSize
from service.ratelimit import Limiter
from service.scopes import ADMIN, PUBLIC, allows, scope_for
from service.store import Store

logger = logging.getLogger(__name__)

PRINCIPAL = "tuneserve.key"  # the ASGI scope entry naming who was let in
ADMIN_TOKEN_ID = "admin-token"
_MISSING = (
    "this route needs an API key: send Authorization: Bearer <key> or X-API-Key: <key> "
    "(auth.require_keys is on; `tuneserve keys create` makes one)"
)
_UNKNOWN = "the API key is not known here: check it, or create one with `tuneserve keys create`"
_NO_HASH = hash_key("")  # compared against when the id is unknown, so both paths cost the same
_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Principal:
    """Who a request was let in as: a key's id and scopes, and its limits."""

    key_id: str
    scopes: frozenset[str]
    rate_per_s: float | None = None
    burst: int | None = None


def open_key_store(settings: ServingConfig) -> Store:
    """The store connection of a worker's key cache (one PostgreSQL connection at most)."""
    store = settings.store
    size = PoolSize(1, 1, store.pool_wait_s, store.connect_timeout_s, store.reconnect_timeout_s)
    return Store(store.location(), store.busy_timeout_ms, pool=size)


class AuthMiddleware:
    """The key check (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: ServingConfig, cache: KeyCache | None = None):
        self.app = app
        self.open = not settings.auth.require_keys
        if self.open:
            return
        auth = settings.auth
        self.cache = cache or KeyCache(lambda: open_key_store(settings), auth.refresh_s)
        self.limiter = Limiter(auth.rate_per_s, auth.burst, settings.workers)
        self.retry_after_s = settings.limits.retry_after_s
        token = os.environ.get(settings.admin_token_env, "")
        self.admin_token = token.encode() if token else None
        self._counters: dict[tuple[str, int], Any] = {}
        self._logged: dict[tuple[str, str], float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.open or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = scope_for(scope["method"], scope["path"])
        if needed == PUBLIC:
            await self.app(scope, receive, send)
            return
        try:
            principal = self._principal(_credential(scope["headers"]))
            if not allows(principal.scopes, needed):
                self._refused("scope", principal.key_id)
                self._count(principal.key_id, 403)
                raise ForbiddenError(
                    f"API key {principal.key_id} has the scopes "
                    f"{', '.join(sorted(principal.scopes))}; {scope['method']} {scope['path']} "
                    f"needs {needed}"
                )
        except ServiceError as error:
            await send_error(send, error)
            return
        extra: list[tuple[bytes, bytes]] = []
        if principal.key_id != ADMIN_TOKEN_ID:
            decision = self.limiter.take(principal.key_id, principal.rate_per_s, principal.burst)
            if decision is not None:
                extra = decision.headers()
                if not decision.allowed:
                    self._refused("rate_limited", principal.key_id, logging.DEBUG)
                    self._count(principal.key_id, 429)
                    await send_error(send, RateLimitedError(
                        f"API key {principal.key_id} is over its rate limit; retry after "
                        f"{decision.retry_after_s} s",
                        headers={k.decode().title(): v.decode() for k, v in extra},
                    ))  # fmt: skip
                    return
        scope[PRINCIPAL] = principal
        status = 500

        async def answered(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, answered)
        finally:
            self._count(principal.key_id, status)

    def _principal(self, credential: str | None) -> Principal:
        """Who ``credential`` is, or the 401 (503 before the keys were first read)."""
        if credential is None:
            self._refused("missing")
            raise UnauthorizedError(_MISSING, headers={"WWW-Authenticate": "Bearer"})
        given = credential.encode()
        if self.admin_token is not None and hmac.compare_digest(given, self.admin_token):
            return Principal(ADMIN_TOKEN_ID, frozenset({ADMIN}))
        keys = self.cache.keys
        if keys is None:
            self._refused("not_loaded")
            raise UnavailableError(
                "the API keys have not been read from the store yet; retry shortly",
                retry_after_s=self.retry_after_s,
            )
        kid = key_id(credential)
        record = keys.get(kid) if kid else None
        matches = hmac.compare_digest(hash_key(credential), record.hash if record else _NO_HASH)
        if record is None or not matches:
            self._refused("unknown")
            raise UnauthorizedError(_UNKNOWN, headers={"WWW-Authenticate": "Bearer"})
        if record.revoked is not None:
            self._refused("revoked", record.id)
            self._count(record.id, 401)
            raise UnauthorizedError(
                f"API key {record.id} was revoked; ask for a new one",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Principal(record.id, record.scopes, record.rate_per_s, record.burst)

    def _count(self, kid: str, status: int) -> None:
        counter = self._counters.get((kid, status))
        if counter is None:
            counter = metrics.KEY_REQUESTS.labels(key_id=kid, outcome=str(status))
            self._counters[(kid, status)] = counter
        counter.inc()

    def _refused(self, reason: str, kid: str = "", level: int = logging.INFO) -> None:
        """Count a refusal; log it by key id, once a minute per key and reason at most."""
        metrics.AUTH_REFUSALS.labels(reason=reason).inc()
        now = time.monotonic()
        if now - self._logged.get((kid, reason), -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._logged[(kid, reason)] = now
            logger.log(level, "API key refused: %s%s", reason, f" (key {kid})" if kid else "")


def _credential(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key of ``Authorization: Bearer`` or ``X-API-Key`` (None without either)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, given = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and given.strip():
                return given.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


def check_admin(request: Any, env_name: str) -> None:
    """For admin handlers: pass when the middleware let the request in with the admin scope (an
    admin key or the admin token), else the admin token check as without keys (check_token)."""
    principal = request.scope.get(PRINCIPAL)
    if principal is not None and ADMIN in principal.scopes:
        return
    check_token(request.headers.get("authorization"), env_name)
