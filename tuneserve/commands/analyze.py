"""`tuneserve analyze`: error analysis of a train run, optionally against a baseline run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _analyze(args: argparse.Namespace) -> int:
    from training.analysis.report import run_analyze

    run_analyze(
        Path(args.run_dir),
        Path(args.against) if args.against else None,
        Path(args.out) if args.out else None,
        overwrite=args.overwrite,
        top=args.top,
        samples=args.samples,
        bins=args.bins,
        length_buckets=args.length_buckets,
    )
    return 0


def add(sub: Any) -> None:
    """Register `tuneserve analyze`."""
    cmd = sub.add_parser(
        "analyze",
        help="error analysis of a train run: confusion, per-class, calibration, mistakes, slices",
        description="Reads a finished train run (its stored test and dev predictions) and writes "
        "analysis.json, analysis.html, confusion and reliability figures and CSV tables.",
    )
    cmd.add_argument("run_dir", help="a finished train run directory")
    cmd.add_argument(
        "--against", metavar="BASELINE_RUN",
        help="a train run on the same test split: where the two disagree and who was right",
    )  # fmt: skip
    cmd.add_argument(
        "--out", metavar="DIR",
        help="output directory (default: artifacts/analysis/RUN[-vs-BASELINE])",
    )  # fmt: skip
    cmd.add_argument("--overwrite", action="store_true", help="replace an analysis in DIR")
    cmd.add_argument("--top", type=int, default=20, help="most confident mistakes listed (20)")
    cmd.add_argument(
        "--samples", type=int, default=10,
        help="--against: examples shown per discordant cell (10)",
    )  # fmt: skip
    cmd.add_argument("--bins", type=int, default=15, help="equal-width ECE bins (15)")
    cmd.add_argument(
        "--length-buckets", type=int, default=4, help="token-length quantile buckets (4)"
    )
    cmd.set_defaults(handler=_analyze)
