"""`tuneserve models list|add|replace|remove`: hot model swap through a running service's admin API.

The service verifies, loads and warms the model before it answers, and every worker of every
replica follows within seconds (README, "Hot model swap"). The admin token is read from the
environment variable the serving config names (``admin_token_env``, TUNESERVE_ADMIN_TOKEN by
default).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tuneserve.commands.admin import DEFAULT_URL, admin_token, call
from tuneserve.errors import RunError


def _list(args: argparse.Namespace) -> int:
    # GET /models is open unless auth.require_keys; then the admin token (if set) is the key
    models = call(args.url, "GET", "/models", token=admin_token(args.config, args.token_env, False))
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    catalog = models.get("catalog", {})
    print(f"{'variant':<14}{'model_version':<34}{'weight':>7}  path")
    for v in models["variants"]:
        control = " (control)" if v["name"] == models["control"] else ""
        print(f"{v['name']:<14}{v['model_version']:<34}{v['weight']:>7.3f}  "
              f"{v.get('path', '')}{control}")  # fmt: skip
    print(f"catalog version {catalog.get('version', 0)} on the worker that answered")
    for name, reason in catalog.get("errors", {}).items():
        print(f"  {name}: not loaded on that worker: {reason}")
    return 0


def _put(args: argparse.Namespace) -> int:
    token = admin_token(args.config, args.token_env)
    served = {v["name"] for v in call(args.url, "GET", "/models", token=token)["variants"]}
    if args.action == "add" and args.name in served:
        raise RunError(f"{args.name!r} is served already: use `tuneserve models replace`")
    if args.action == "replace" and args.name not in served:
        raise RunError(f"{args.name!r} is not served ({', '.join(sorted(served))}): use "
                       "`tuneserve models add`")  # fmt: skip
    body: dict[str, Any] = {"path": str(Path(args.path).resolve()) if args.resolve else args.path}
    if args.sha256:
        body["sha256"] = args.sha256
    if args.model_version:
        body["model_version"] = args.model_version
    answer = call(args.url, "PUT", f"/models/{args.name}", body, token)
    if not answer.get("changed", True):
        print(f"{args.name}: {answer['model_version']} was served already; nothing changed")
    else:
        print(f"{args.name}: now {answer['model_version']} (the other workers follow within "
              "seconds; `tuneserve models list`)")  # fmt: skip
    return 0


def _remove(args: argparse.Namespace) -> int:
    token = admin_token(args.config, args.token_env)
    call(args.url, "DELETE", f"/models/{args.name}", token=token)
    print(f"{args.name}: removed")
    return 0


def add(sub: Any) -> None:
    """Register `tuneserve models ...`."""
    models = sub.add_parser("models", help="list, add, replace or remove served variants at "
                            "runtime (hot swap through the admin API)")  # fmt: skip
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(parser: argparse.ArgumentParser, admin: bool) -> None:
        parser.add_argument(
            "--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})"
        )
        if admin:
            parser.add_argument("--config", help="serving config naming the admin token's "
                                "variable (default: $TUNESERVE_SERVING_CONFIG or "
                                "configs/serving.toml)")  # fmt: skip
            parser.add_argument("--token-env", help="environment variable with the admin token "
                                "(default: the serving config's admin_token_env)")  # fmt: skip

    listing = actions.add_parser("list", help="each variant's model_version, weight and path")
    common(listing, admin=True)  # the token, if set, is the key when auth.require_keys
    listing.add_argument("--json", action="store_true", help="print GET /models as JSON")
    listing.set_defaults(handler=_list)
    for action, text in (("add", "serve a new variant (weight 0 until PUT /ab/config)"),
                         ("replace", "swap the model of a served variant")):  # fmt: skip
        put = actions.add_parser(action, help=text)
        put.add_argument("name", help="variant name")
        put.add_argument("path", help="export run directory, as the server sees it")
        put.add_argument("--sha256", help="refuse unless the serving model has this sha256")
        put.add_argument("--model-version", help="refuse unless it has this model_version")
        put.add_argument("--no-resolve", dest="resolve", action="store_false",
                         help="send PATH as given (default: made absolute here)")  # fmt: skip
        common(put, admin=True)
        put.set_defaults(handler=_put)
    remove = actions.add_parser("remove", help="stop serving a variant (not the control; its "
                                "weight must be 0)")  # fmt: skip
    remove.add_argument("name", help="variant name")
    common(remove, admin=True)
    remove.set_defaults(handler=_remove)
