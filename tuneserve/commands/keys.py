"""`tuneserve keys create|list|revoke`: API keys in the serving config's store, no restart."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

SERVING_CONFIG_HELP = "serving config (default: $TUNESERVE_SERVING_CONFIG or configs/serving.toml)"


def _key_store(args: argparse.Namespace, create: bool = False) -> Any:
    """The keys of ``--db`` or the serving config's store (created only by ``keys create``)."""
    from service.apikeys import KeyStore
    from service.config import config_path, load_serving_config
    from service.offline import open_store
    from service.store import Store

    settings = load_serving_config(Path(args.config) if args.config else config_path())
    where = args.db or settings.store.location()
    store = Store(where, settings.store.busy_timeout_ms) if create else open_store(where, settings)
    return KeyStore(store)


def _create(args: argparse.Namespace) -> int:
    keys = _key_store(args, create=True)
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    record, key = keys.create(args.name, scopes, args.rate, args.burst)
    keys.store.close()
    print(f"created API key {record.id} ({args.name}; scopes {', '.join(sorted(record.scopes))})")
    print("the key, shown this once (only its hash is stored):")
    print(key)
    return 0


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _list(args: argparse.Namespace) -> int:
    keys = _key_store(args)
    records = keys.all()
    keys.store.close()
    if args.json:
        print(json.dumps([r.public() for r in records], indent=2))
        return 0
    print(f"{'id':<12}  {'name':<20}  {'scopes':<28}  {'created (UTC)':<19}  "
          f"{'revoked (UTC)':<19}  limit")  # fmt: skip
    for r in records:
        limit = "default" if r.rate_per_s is None and r.burst is None else (
            f"{'default' if r.rate_per_s is None else f'{r.rate_per_s:g}'}/s, burst "
            f"{'default' if r.burst is None else r.burst}")  # fmt: skip
        print(f"{r.id:<12}  {r.name[:20]:<20}  {','.join(sorted(r.scopes)):<28}  "
              f"{_when(r.created):<19}  {_when(r.revoked):<19}  {limit}")  # fmt: skip
    return 0


def _revoke(args: argparse.Namespace) -> int:
    keys = _key_store(args)
    try:
        record = keys.revoke(args.id)
    finally:
        keys.store.close()
    print(f"revoked API key {record.id} at {_when(record.revoked)} UTC; every worker refuses it "
          "within auth.refresh_s")  # fmt: skip
    return 0


def add(sub: Any) -> None:
    """Register `tuneserve keys`."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys (auth.require_keys)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    for name, handler, text in (
        ("create", _create, "make a key; it is printed once, only its hash is stored"),
        ("list", _list, "list the keys (ids, names, scopes; never the keys)"),
        ("revoke", _revoke, "revoke a key by id; refused by every worker within a second"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", help=SERVING_CONFIG_HELP)
        action.add_argument(
            "--db", help="SQLite file or postgresql:// URL (default: the serving config's store)"
        )
        action.set_defaults(handler=handler)
        if name == "create":
            action.add_argument("--name", required=True, help="who the key is for (not secret)")
            action.add_argument(
                "--scopes", default="predict",
                help="comma-separated: predict, feedback, report, admin (default: predict)",
            )  # fmt: skip
            action.add_argument(
                "--rate", type=float, help="requests/s per replica (default: auth.rate_per_s; 0: "
                "unlimited)",
            )  # fmt: skip
            action.add_argument("--burst", type=int, help="burst (default: auth.burst)")
        elif name == "list":
            action.add_argument("--json", action="store_true", help="print JSON")
        else:
            action.add_argument("id", help="the key's id (the 12 hex characters after ts_)")
