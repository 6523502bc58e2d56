"""The admin API of a running service, for the subcommands that steer it (`tuneserve models`,
`tuneserve ab-rollout`): one JSON call, and the admin token from the environment."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tuneserve.errors import RunError

DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_TOKEN_ENV = "TUNESERVE_ADMIN_TOKEN"


def call(
    url: str, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None
) -> dict[str, Any]:
    """One JSON call to the service; RunError saying why when it is unreachable or refuses."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url.rstrip("/") + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:  # a model load may take long
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read() or b"{}")
        except ValueError:
            error = {}
        reason = error.get("error") or exc.reason
        raise RunError(
            f"the service at {url} refused {method} {path}: {exc.code} "
            f"{error.get('kind', 'error')}: {reason}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise RunError(
            f"cannot reach the service at {url} ({why}): is it running (`tuneserve serve`)? "
            "Point --url at it"
        ) from None


def admin_token(config: str | None, token_env: str | None, required: bool = True) -> str:
    """The admin token from the environment variable the serving config names ("" when it is
    unset and not ``required``: a read that works without keys, and with them given the token)."""
    name = token_env
    if name is None:
        from service.config import config_path, load_serving_config

        path = Path(config) if config else config_path()
        name = load_serving_config(path).admin_token_env if path.is_file() else DEFAULT_TOKEN_ENV
    token = os.environ.get(name, "")
    if not token and required:
        raise RunError(f"set {name} to the service's admin token (the serving config's "
                       "admin_token_env names the variable)")  # fmt: skip
    return token
