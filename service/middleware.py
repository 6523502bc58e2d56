"""ASGI middleware in front of every route: body limit, admission control, one error shape, metrics.

- Bodies larger than ``limits.max_body_bytes`` get 413 before anything parses them.
- Prediction requests beyond ``limits.max_inflight`` in this worker get 503 with Retry-After
  (BentoML's own 429/504 limits stay as a backstop; they cannot carry Retry-After).
- Any error answer from a lower layer (BentoML's validation 400, Starlette's 404/405, a 500) is
  rewritten into the one error shape of ``service.errors``, without tracebacks or request text.
- Every answer is counted in ``tuneserve_requests_total`` and timed per endpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from service import metrics
from service.config import LimitsConfig
from service.errors import OverloadedError, PayloadTooLargeError, ServiceError, error_body
from service.errors import kind_for_status as _kind_for_status

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREDICT_KINDS = frozenset({"predict", "predict_batch", "v2_infer"})
KNOWN_KINDS = frozenset(
    {"predict", "predict_batch", "feedback", "models", "ab", "livez", "readyz", "metrics", "v2"}
)


def endpoint_kind(path: str) -> str:
    """The low-cardinality name of an endpoint (``other`` for anything unknown); the v2
    protocol's inference routes are ``v2_infer``, its others ``v2`` (service/v2/)."""
    name = path.strip("/").split("/", 1)[0]
    if name == "v2" and path.endswith("/infer"):
        return "v2_infer"
    return name if name in KNOWN_KINDS else "other"


def error_message(status: int, body: bytes) -> str:
    """A readable message from another layer's error body (never echoing request input)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # BentoML answers raised 4xx errors as a one-item list
    if isinstance(data, dict):
        detail = data.get("detail")
        if isinstance(detail, list) and detail:  # pydantic validation errors, input excluded
            parts = []
            for err in detail:
                loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
            return "invalid request: " + "; ".join(parts)
        if isinstance(data.get("error"), str):
            return data["error"]
        if isinstance(detail, str):
            return detail
    if status >= 500:
        return "internal error; the server log has the details"
    return HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"


def _is_ours(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and {"error", "kind", "status"} <= data.keys()


async def send_error(send: Send, error: ServiceError) -> None:
    """Answer ``error`` directly from the middleware."""
    payload = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class GuardMiddleware:
    """The service's front door (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: LimitsConfig) -> None:
        self.app = app
        self.limits = limits
        self.inflight = 0
        self._counters: dict[tuple[str, int], Any] = {}  # metric children, looked up once
        self._timers: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = endpoint_kind(scope["path"])
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500}

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, counted_send, kind)
        finally:
            status = state["status"]
            counter = self._counters.get((kind, status))
            if counter is None:
                counter = metrics.REQUESTS.labels(kind=kind, outcome=str(status))
                self._counters[(kind, status)] = counter
            counter.inc()
            timer = self._timers.get(kind)
            if timer is None:
                timer = self._timers[kind] = metrics.REQUEST_SECONDS.labels(kind=kind)
            timer.observe(time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        body = await self._read_body(receive) if scope["method"] in ("POST", "PUT") else None
        if isinstance(body, ServiceError):
            metrics.ERRORS.labels(kind=body.kind).inc()
            await send_error(send, body)
            return
        replay = _replay(body) if body is not None else receive
        if kind not in PREDICT_KINDS:
            await self.app(scope, replay, _ErrorRewriter(send))
            return
        if self.inflight >= self.limits.max_inflight:
            error = OverloadedError(
                f"the service is at its limit of {self.limits.max_inflight} requests in flight "
                "per worker; retry shortly",
                retry_after_s=self.limits.retry_after_s,
            )
            metrics.ERRORS.labels(kind=error.kind).inc()
            await send_error(send, error)
            return
        self.inflight += 1
        metrics.INFLIGHT.inc()
        try:
            await self.app(scope, replay, _ErrorRewriter(send))
        finally:
            self.inflight -= 1
            metrics.INFLIGHT.dec()

    async def _read_body(self, receive: Receive) -> bytes | ServiceError:
        limit = self.limits.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return PayloadTooLargeError(
                    f"request body is larger than {limit} bytes (limits.max_body_bytes)"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


class _ErrorRewriter:
    """A ``send`` that turns error answers of other layers into the one error shape."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                await self.send(message)
                return
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        await self._flush()

    async def _flush(self) -> None:
        if self.start is None:
            return
        status = self.start["status"]
        body = b"".join(self.chunks)
        headers = [
            (k, v)
            for k, v in self.start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type")
        ]
        if _is_ours(body):
            kind = json.loads(body)["kind"]
        else:
            kind = _kind_for_status(status)
            body = json.dumps(error_body(status, kind, error_message(status, body))).encode()
        metrics.ERRORS.labels(kind=kind).inc()
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
