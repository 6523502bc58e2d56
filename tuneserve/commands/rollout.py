"""`tuneserve ab-rollout status|pause|resume|abort`: the progressive rollout from the command line.

``status`` reads the experiment store, as `tuneserve ab-report` does (the serving config names
it, or ``--db``), so it works while the service is down. ``pause``, ``resume`` and ``abort`` go
through the running service's admin API (``PUT /ab/rollout``, the bearer token from the
environment variable the serving config's ``admin_token_env`` names), so the service applies
them by the same rules as any admin change.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tuneserve.errors import TuneserveError

DEFAULT_URL = "http://127.0.0.1:3000"
TIMEOUT_S = 10.0


def add(sub: Any) -> None:
    """Register `tuneserve ab-rollout`."""
    parser = sub.add_parser("ab-rollout", help="show or steer the progressive rollout")
    parser.add_argument("action", choices=["status", "pause", "resume", "abort"])
    parser.add_argument(
        "--config",
        help="serving config (default: $TUNESERVE_SERVING_CONFIG or configs/serving.toml)",
    )
    parser.add_argument(
        "--db", help="status: SQLite file or postgresql:// URL (default: the config's store)"
    )
    parser.add_argument("--json", action="store_true", help="status: print JSON")
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"pause/resume/abort: the service (default {DEFAULT_URL})",
    )
    parser.set_defaults(handler=_rollout)


def _rollout(args: argparse.Namespace) -> int:
    from service.config import config_path, load_serving_config

    settings = load_serving_config(Path(args.config) if args.config else config_path())
    if args.action == "status":
        from service.experiment.judge import format_rollout, rollout_status
        from service.offline import open_store

        status = rollout_status(
            open_store(args.db or settings.store.location(), settings), settings
        )
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print("\n".join(format_rollout(status)) or "no rollout plan has been started")
        return 0
    token = os.environ.get(settings.admin_token_env, "")
    if not token:
        raise TuneserveError(
            f"{args.action} needs the admin token: set {settings.admin_token_env} (the serving "
            "config's admin_token_env) to the service's token"
        )
    answer = put_rollout(args.url, {"action": args.action}, token)
    plan = answer.get("rollout") or {}
    print(f"rollout of {plan.get('challenger')}: {plan.get('status')} (state version "
          f"{answer.get('version')})")  # fmt: skip
    return 0


def put_rollout(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    """PUT ``body`` to ``url``/ab/rollout with the admin token; the answer, or an error that
    says what the service answered (or that it could not be reached)."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/ab/rollout",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", "")
        except ValueError:
            message = ""
        raise TuneserveError(
            f"the service at {url} refused the {body.get('action')}: {exc.code} {message}".strip()
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TuneserveError(
            f"cannot reach the service at {url} ({reason}): start it (tuneserve serve) or pass "
            "--url"
        ) from None
