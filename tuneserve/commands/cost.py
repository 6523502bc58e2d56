"""`tuneserve cost`: instances, cost and memory at a target rate, from find-max load tests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXAMPLE = ("e.g. tuneserve cost artifacts/loadtest/max/report.json --price-per-hour 0.34 "
           "--target-rps 500, or --profile cpu=REPORT:0.34 --profile gpu=REPORT:2.10")  # fmt: skip


def _cost(args: argparse.Namespace) -> int:
    from loadtests.cost import Profile, check_price, parse_profile, read_find_max
    from loadtests.costreport import run_cost
    from tuneserve.errors import ConfigError

    profiles = [parse_profile(text) for text in args.profiles]
    if args.report:
        if args.price_per_hour is None:
            raise ConfigError(f"{args.report} needs --price-per-hour (per instance-hour); "
                              f"{EXAMPLE}")  # fmt: skip
        check_price(args.price_per_hour, "--price-per-hour")
        memory = read_find_max(Path(args.report)).get("server_memory") or {}
        name = "gpu" if memory.get("server", {}).get("device") == "cuda" else "cpu"
        profiles.insert(0, Profile(name, Path(args.report), args.price_per_hour))
    elif args.price_per_hour is not None:
        raise ConfigError("--price-per-hour goes with a REPORT argument; with --profile the "
                          "price is part of it (NAME=REPORT:PRICE)")  # fmt: skip
    for text in args.bench:
        name, sep, path = text.partition("=")
        match = next((i for i, p in enumerate(profiles) if p.name == name.strip()), None)
        if not sep or match is None:
            known = ", ".join(p.name for p in profiles) or "none"
            raise ConfigError(f"--bench {text!r} is not PROFILE=BENCH_JSON for a given profile "
                              f"(profiles: {known})")  # fmt: skip
        profile = profiles[match]
        profiles[match] = Profile(profile.name, profile.report, profile.price_per_hour,
                                  Path(path.strip()))  # fmt: skip
    run_cost(profiles, args.target_rps, args.headroom, args.currency, Path(args.out),
             args.run_id, ["tuneserve", *args.argv])  # fmt: skip
    return 0


def add(sub: Any) -> None:
    """Register `tuneserve cost`."""
    from loadtests.cost import DEFAULT_HEADROOM

    cost = sub.add_parser(
        "cost", help="instances, cost per hour/month/million predictions, and memory at a "
        "target rate, from find-max load tests and your price per instance-hour",
        description=f"Plans each instance (one server as load-tested) at --headroom of the "
        f"highest rate that met the SLO of its find-max run. {EXAMPLE}.",
    )  # fmt: skip
    cost.add_argument("report", nargs="?", help="report.json of a `loadtest --find-max` run")
    cost.add_argument("--price-per-hour", type=float, metavar="PRICE",
                      help="with REPORT: your price of one instance per hour")  # fmt: skip
    cost.add_argument(
        "--profile", dest="profiles", action="append", default=[], metavar="NAME=REPORT:PRICE",
        help="a deployment option: its find-max report.json and price per instance-hour "
        "(repeat for cpu and gpu; a profile named gpu* must have CUDA figures)",
    )  # fmt: skip
    cost.add_argument("--target-rps", type=float, required=True,
                      help="the request rate to serve (predictions per second)")  # fmt: skip
    cost.add_argument(
        "--headroom", type=float, default=DEFAULT_HEADROOM,
        help=f"utilisation planned per instance, of its max rate at SLO (default "
        f"{DEFAULT_HEADROOM}: 30%% spare for bursts and a lost replica)",
    )  # fmt: skip
    cost.add_argument(
        "--bench",
        action="append",
        default=[],
        metavar="PROFILE=BENCH_JSON",
        help="a bench-model bench.json of the profile's model (shown beside it)",
    )
    cost.add_argument("--currency", default="USD", help="the prices' currency (a label)")
    cost.add_argument("--out", default="artifacts/cost", help="writes OUT/RUN_ID/cost.json")
    cost.add_argument("--run-id", help="name of the output folder (default: a timestamp)")
    cost.set_defaults(handler=_cost)
