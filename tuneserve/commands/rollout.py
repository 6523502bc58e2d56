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
from pathlib import Path
from typing import Any

from tuneserve.commands.admin import DEFAULT_URL, admin_token, call


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
    token = admin_token(args.config, settings.admin_token_env)
    answer = call(args.url, "PUT", "/ab/rollout", {"action": args.action}, token)
    plan = answer.get("rollout") or {}
    print(f"rollout of {plan.get('challenger')}: {plan.get('status')} (state version "
          f"{answer.get('version')})")  # fmt: skip
    return 0
