"""The `tuneserve` command: one subcommand per stage; stage modules are imported inside handlers."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tuneserve import __version__
from tuneserve.errors import TuneserveError

log = logging.getLogger("tuneserve")
SERVING_CONFIG_HELP = "serving config (default: $TUNESERVE_SERVING_CONFIG or configs/serving.toml)"


def _train(args: argparse.Namespace) -> int:
    from training.config import TrainingConfig
    from training.run import run_train
    from tuneserve.config import load_config

    overrides = list(args.overrides)
    if args.method:
        overrides.append(f"method={args.method}")
    cfg = load_config(TrainingConfig, args.config, overrides)
    run_train(cfg, data=args.data, run_id=args.run_id, overwrite=args.overwrite)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from training.run import default_run_id, write_comparison

    write_comparison(
        Path(args.run_a),
        Path(args.run_b),
        Path(args.out),
        args.run_id or default_run_id(),
        overwrite=args.overwrite,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from export.config import ExportConfig
    from export.run import run_export
    from tuneserve.config import load_config

    overrides = list(args.overrides)
    if args.profile:
        overrides.append(f"profile={args.profile}")
    cfg = load_config(ExportConfig, args.config, overrides)
    run_export(Path(args.source), cfg, run_id=args.run_id, overwrite=args.overwrite)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from service.config import config_path
    from service.launch import serve

    config = Path(args.config) if args.config else config_path()
    texts = Path(args.texts) if args.texts else None
    return serve(config, args.host, args.port, try_n=args.try_n, texts=texts)


def _ab_report(args: argparse.Namespace) -> int:
    import json

    from service.config import config_path, load_serving_config
    from service.report import build_report, format_report
    from service.store import Store

    settings = load_serving_config(Path(args.config) if args.config else config_path())
    db = Path(args.db) if args.db else settings.store.path
    if not db.is_file():
        raise TuneserveError(f"no experiment store at {db}: pass --db or serve first")
    report = build_report(Store(db), settings)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _bench_model(args: argparse.Namespace) -> int:
    from export.bench import run_bench

    run_bench(Path(args.source), sentences=args.sentences, out=args.out)
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """--config FILE and repeatable --set KEY=VALUE, the same for every stage."""
    parser.add_argument("--config", help="TOML or YAML config (defaults apply without one)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. {example}",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneserve", description="Fine-tune, export and serve transformer text classifiers."
    )
    parser.add_argument("--version", action="version", version=f"tuneserve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="check the data, train baseline and/or LoRA, evaluate")
    add_config_arguments(train, "lora.r=8")
    train.add_argument(
        "--method",
        choices=["head", "lora", "both"],
        help="head (baseline), lora, or both then compare",
    )
    train.add_argument("--data", help="data directory (overrides $TUNESERVE_DATA and data.source)")
    train.add_argument("--run-id", help="run name; directories are RUN_ID-METHOD")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace runs of the same id (only once the new run finishes)",
    )
    train.set_defaults(handler=_train)

    cmp = sub.add_parser("compare", help="compare two train runs (baseline first)")
    cmp.add_argument("run_a", help="baseline run directory")
    cmp.add_argument("run_b", help="tuned run directory")
    cmp.add_argument("--out", default="artifacts/compare", help="where comparisons go")
    cmp.add_argument("--run-id", help="name of the comparison directory")
    cmp.add_argument("--overwrite", action="store_true", help="replace a comparison of that id")
    cmp.set_defaults(handler=_compare)

    exp = sub.add_parser("export", help="merge, export to ONNX, optimise, quantise, gate")
    exp.add_argument("--from", dest="source", required=True, help="a finished train run")
    exp.add_argument(
        "--profile",
        choices=["cpu-int8", "cpu-fp32", "gpu-fp16"],
        help="serving model kind (default: gpu-fp16 with CUDA, else cpu-int8)",
    )
    add_config_arguments(exp, "gates.min_agreement=0.98")
    exp.add_argument("--run-id", help="name of the export directory (default: TRAIN_RUN-PROFILE)")
    exp.add_argument("--overwrite", action="store_true", help="replace an export of that id")
    exp.set_defaults(handler=_export)

    bench = sub.add_parser("bench-model", help="PyTorch vs ONNX fp32 vs the serving model")
    bench.add_argument("--from", dest="source", required=True, help="a finished export run")
    bench.add_argument(
        "--sentences",
        type=int,
        default=300,
        help="test sentences timed at batch 1 (accuracy uses the whole split)",
    )
    bench.add_argument("--out", help="output directory (default: artifacts/bench-model/RUN_ID)")
    bench.set_defaults(handler=_bench_model)

    srv = sub.add_parser("serve", help="serve the variants of a serving config (bentoml serve)")
    srv.add_argument(
        "--config",
        help=SERVING_CONFIG_HELP,
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    srv.add_argument("--port", type=int, default=3000, help="port to listen on")
    srv.add_argument(
        "--try",
        dest="try_n",
        type=int,
        default=0,
        metavar="N",
        help="once ready, send N labelled sentences from --texts, print a table, and stop",
    )
    srv.add_argument("--texts", help="labelled split for --try (sentence and label columns)")
    srv.set_defaults(handler=_serve)

    rep = sub.add_parser("ab-report", help="print the A/B report from the experiment store")
    rep.add_argument("--db", help="SQLite store (default: store.path of the serving config)")
    rep.add_argument(
        "--config",
        help=SERVING_CONFIG_HELP,
    )
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rep.set_defaults(handler=_ab_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; a TuneserveError becomes one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    from tuneserve.logs import setup_logging

    setup_logging(args.verbose)
    # SIGTERM unwinds like Ctrl-C, so unfinished run directories are removed.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return int(args.handler(args))
    except TuneserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"error: out of disk space ({exc}): free space and run again; the unfinished run "
            "was removed",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing of the unfinished run was kept", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
