"""ASGI middleware: every error answer under /v2 in the protocol's shape, ``{"error": message}``.

The v2 protocol's error body is ``{"error": message}``; the rest of the service answers
``{"error", "kind", "status"}`` (service/errors.py). Errors are raised and answered as
everywhere else, from the one error table, then this middleware, added before every other one
of the service (so outermost), keeps only ``error`` for paths under /v2: the status and the
headers (``Retry-After`` among them) stay as the error table set them, whichever layer answered
(a route, admission control, the body limit, Starlette's 404/405). BentoML's own backstops
(outside the service's middleware) already answer ``{"error": message}``.
"""

from __future__ import annotations

import json
from typing import Any

from service.middleware import ASGIApp, Message, Receive, Scope, Send, error_message

PREFIX = "/v2"


def is_v2(path: str) -> bool:
    """Whether ``path`` is one of the protocol's (``/v2`` or below it)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def v2_error(status: int, body: bytes) -> bytes:
    """An error body of any layer rewritten as ``{"error": message}``."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]
    else:
        message = error_message(status, body)
    return json.dumps({"error": message}).encode()


class V2ErrorShape:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_v2(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def shaped_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = v2_error(start["status"], b"".join(chunks))
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, shaped_send)
