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
from typing import Any

from tuneserve import __version__
from tuneserve.commands import analyze, cost, keys, rollout
from tuneserve.commands import models as models_command
from tuneserve.errors import TuneserveError

log = logging.getLogger("tuneserve")
SERVING_CONFIG_HELP = "serving config (default: $TUNESERVE_SERVING_CONFIG or configs/serving.toml)"
Subparsers = Any  # argparse._SubParsersAction, private
# tuneserve/commands/ modules, each with add(sub); they import their stage inside handlers
COMMAND_MODULES: tuple[Any, ...] = (analyze, keys, rollout, models_command, cost)


def _train(args: argparse.Namespace) -> int:
    import json

    from training.config import TrainingConfig
    from training.run import run_train
    from tuneserve.config import load_config
    from tuneserve.errors import ConfigError

    overrides = list(args.overrides)
    if args.method:
        overrides.append(f"method={args.method}")
    if args.teacher:
        overrides.append(f"distill.teacher={json.dumps(args.teacher)}")
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    cfg = load_config(TrainingConfig, args.config, overrides)
    if args.teacher and cfg.method != "distill":
        raise ConfigError(f"--teacher is for --method distill, not method {cfg.method!r}")
    if args.cv is not None:
        from training.cv import run_cv

        if args.nproc > 1:
            raise ConfigError("--cv trains its folds in one process: drop --nproc")
        run_cv(cfg, args.cv, data=args.data, run_id=args.run_id, overwrite=args.overwrite)
        return 0
    if args.nproc > 1:  # the ranks rerun this command without --nproc, under torch.distributed
        from training.distributed import launch, without_nproc

        launch(args.nproc, without_nproc(args.argv))
        return 0
    run_train(cfg, data=args.data, run_id=args.run_id, overwrite=args.overwrite)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from training.run import default_run_id, write_comparison

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    write_comparison(
        Path(args.run_a),
        Path(args.run_b),
        Path(args.out),
        args.run_id or default_run_id(),
        overwrite=args.overwrite,
        alpha=args.alpha,
        exports=(path(args.export_a), path(args.export_b)),
        benches=(path(args.bench_a), path(args.bench_b)),
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
    return serve(
        config, args.host, args.port, try_n=args.try_n, texts=texts,
        text_column=args.text_column, label_column=args.label_column,
    )  # fmt: skip


def _ab_report(args: argparse.Namespace) -> int:
    from service.offline import print_report

    print_report(Path(args.config) if args.config else None, args.db, args.json, args.html)
    return 0


def _bench_model(args: argparse.Namespace) -> int:
    from export.bench import run_bench

    run_bench(Path(args.source), sentences=args.timed, out=args.out)
    return 0


LOADTEST_FLAGS = ("host", "users", "spawn_rate", "shape", "open_loop", "rate", "arrivals",
                  "max_outstanding", "path", "texts", "text_column", "label_column", "model",
                  "feedback", "seed", "out", "run_id", "processes", "raw_requests")  # fmt: skip
LOADTEST_DURATIONS = {"duration": "duration_s", "warmup": "warmup_s",
                      "feedback_delay": "feedback_delay_s"}  # fmt: skip


def _loadtest_config(args: argparse.Namespace) -> Any:
    """The config file, then its --set overrides, then the flags given on the command line."""
    import json

    from loadtests.config import load_loadtest_config
    from loadtests.slo import parse_duration_s
    from tuneserve.errors import ConfigError

    flags = {key: getattr(args, key) for key in LOADTEST_FLAGS}
    for flag, key in LOADTEST_DURATIONS.items():
        if getattr(args, flag) is not None:
            flags[key] = parse_duration_s(getattr(args, flag), "--" + flag.replace("_", "-"))
    try:
        flags["label_names"] = json.loads(args.label_names) if args.label_names else None
    except ValueError as exc:
        raise ConfigError(
            f'--label-names is not JSON ({exc}): e.g. --label-names \'{{"0": "negative"}}\''
        ) from exc
    cfg = load_loadtest_config(args.config, args.overrides, flags)
    if args.serve and cfg.model is None:  # the columns of the model about to be served
        from service.launch import control_export

        cfg = cfg.model_copy(update={"model": control_export(Path(args.serve))})
    return cfg


def _loadtest(args: argparse.Namespace) -> int:
    from loadtests.run import run_loadtest

    cfg = _loadtest_config(args)
    server = None
    if args.serve:
        from functools import partial

        from service.launch import served

        server = partial(served, Path(args.serve), cfg.host)
    return run_loadtest(
        cfg, args.slo, ["tuneserve", *args.argv], find_max=args.find_max,
        max_rate=args.max_rate, precision=args.find_max_precision, server=server,
        cluster=_loadtest_cluster(args),
    )  # fmt: skip


def _loadtest_cluster(args: argparse.Namespace) -> Any:
    """Alone, a Locust master, or a worker: from --master / --worker and their options."""
    from loadtests.config import ClusterConfig
    from tuneserve.config import validate_config
    from tuneserve.errors import ConfigError

    if args.master and args.worker:
        raise ConfigError("--master and --worker exclude each other: one process is one of them")
    if args.serve and (args.master or args.worker):
        raise ConfigError("--serve starts a service for a run on this machine: drop it with "
                          "--master/--worker and start the service yourself")  # fmt: skip
    role = "master" if args.master else "worker" if args.worker else "local"
    data = {
        "role": role,
        "expect_workers": args.expect_workers,
        "master_host": args.master_host,
        "master_port": args.master_port,
        "master_bind_host": args.master_bind_host,
    }
    return validate_config(ClusterConfig, {k: v for k, v in data.items() if v is not None},
                           "load-test distribution options")  # fmt: skip


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C (whatever catches KeyboardInterrupt to clean up catches it).

    A subclass on purpose. CI once saw a SIGTERM'd training end with status -2 (by SIGINT)
    although ``main`` had caught the interrupt and returned 130. The likely cause: CPython
    notes a KeyboardInterrupt of exactly that type escaping Python code that C code (torch's)
    ran, and at exit ends the process by SIGINT; a subclass does not match that check."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


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


def _add_train(sub: Subparsers) -> None:
    train = sub.add_parser("train", help="check the data, train baseline and/or LoRA, evaluate")
    add_config_arguments(train, "lora.r=8")
    train.add_argument(
        "--method",
        choices=["head", "lora", "both", "distill"],
        help="head (baseline), lora, both then compare, or distill (a smaller student)",
    )
    train.add_argument(
        "--teacher", metavar="RUN_DIR",
        help="distill: the finished train run that teaches the student (sets distill.teacher)",
    )  # fmt: skip
    train.add_argument(
        "--cv", type=int, metavar="K",
        help="K-fold cross-validation on stratified folds of train: K runs, mean ± std",
    )  # fmt: skip
    train.add_argument("--data", help="data directory (overrides $TUNESERVE_DATA and data.source)")
    train.add_argument("--run-id", help="run name; directories are RUN_ID-METHOD")
    train.add_argument(
        "--overwrite", action="store_true",
        help="replace runs of the same id (only once the new run finishes)",
    )  # fmt: skip
    train.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="data-parallel training in N processes on this machine (gloo on CPU, NCCL on "
        "GPUs); train.batch_size stays the global batch; for several machines use torchrun",
    )  # fmt: skip
    train.set_defaults(handler=_train)


def _add_compare(sub: Subparsers) -> None:
    cmp = sub.add_parser("compare", help="compare two train runs (baseline first)")
    cmp.add_argument("run_a", help="baseline run directory")
    cmp.add_argument("run_b", help="tuned run directory")
    cmp.add_argument("--out", default="artifacts/compare", help="where comparisons go")
    cmp.add_argument("--run-id", help="name of the comparison directory")
    cmp.add_argument("--overwrite", action="store_true", help="replace a comparison of that id")
    cmp.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    for side, run in (("a", "baseline"), ("b", "tuned")):
        cmp.add_argument(
            f"--export-{side}", metavar="EXPORT_RUN",
            help=f"export run of the {run} run: model sizes, and latency from its bench-model "
            "report (found in artifacts/bench-model/<export run>)",
        )  # fmt: skip
        cmp.add_argument(
            f"--bench-{side}", metavar="BENCH_DIR",
            help=f"bench-model output of --export-{side}, if not in the default place",
        )  # fmt: skip
    cmp.set_defaults(handler=_compare)


def _add_export(sub: Subparsers) -> None:
    exp = sub.add_parser("export", help="merge, export to ONNX, optimise, quantise, gate")
    exp.add_argument("--from", dest="source", required=True, help="a finished train run")
    exp.add_argument(
        "--profile", choices=["cpu-int8", "cpu-fp32", "gpu-fp16"],
        help="serving model kind (default: gpu-fp16 with CUDA, else cpu-int8)",
    )  # fmt: skip
    add_config_arguments(exp, "gates.min_agreement=0.98")
    exp.add_argument("--run-id", help="name of the export directory (default: TRAIN_RUN-PROFILE)")
    exp.add_argument("--overwrite", action="store_true", help="replace an export of that id")
    exp.set_defaults(handler=_export)


def _add_bench_model(sub: Subparsers) -> None:
    bench = sub.add_parser("bench-model", help="PyTorch vs ONNX fp32 vs the serving model")
    bench.add_argument("--from", dest="source", required=True, help="a finished export run")
    bench.add_argument(
        "--timed", "--sentences", dest="timed", type=int, default=600, metavar="N",
        help="test texts timed at batch 1 (accuracy uses the whole split; --sentences: old name)",
    )  # fmt: skip
    bench.add_argument("--out", help="output directory (default: artifacts/bench-model/RUN_ID)")
    bench.set_defaults(handler=_bench_model)


def _add_column_arguments(parser: argparse.ArgumentParser) -> None:
    """--text-column and --label-column: by default the served model's (its train config's)."""
    parser.add_argument(
        "--text-column", help="text column of --texts (default: the one the model "
        "was trained on, from its manifest)",
    )  # fmt: skip
    parser.add_argument(
        "--label-column", help="label column of --texts (default: the one the "
        "model was trained on; integer or string labels)",
    )  # fmt: skip


def _add_serve(sub: Subparsers) -> None:
    srv = sub.add_parser("serve", help="serve the variants of a serving config (bentoml serve)")
    srv.add_argument("--config", help=SERVING_CONFIG_HELP)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    srv.add_argument("--port", type=int, default=3000, help="port to listen on")
    srv.add_argument(
        "--try", dest="try_n", type=int, default=0, metavar="N",
        help="once ready, send N labelled texts from --texts, print a table, and stop",
    )  # fmt: skip
    srv.add_argument("--texts", help="labelled split for --try (TSV/CSV/JSONL/Parquet)")
    _add_column_arguments(srv)
    srv.set_defaults(handler=_serve, interrupted="stopped")


def _add_ab_report(sub: Subparsers) -> None:
    rep = sub.add_parser("ab-report", help="print the A/B report from the experiment store")
    rep.add_argument(
        "--db", help="SQLite file or postgresql:// URL (default: the serving config's store)"
    )
    rep.add_argument("--config", help=SERVING_CONFIG_HELP)
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rep.add_argument("--html", metavar="PATH", help="also write the HTML page (accuracy over time)")
    rep.set_defaults(handler=_ab_report)


def _add_loadtest(sub: Subparsers) -> None:
    """Every traffic flag defaults to None: unset flags leave the config file's value (or the
    default in loadtests/config.py, the one place defaults live)."""
    load = sub.add_parser(
        "loadtest", help="Locust load test with an SLO gate and reports",
        description="Flags override --config FILE and --set; the defaults and every key are in "
        "configs/loadtest.toml.",
    )  # fmt: skip
    add_config_arguments(load, "rate=50")
    load.add_argument("--host", help="service base URL (default http://127.0.0.1:3000)")
    load.add_argument("--users", type=int, help="closed loop: users (the shape's peak)")
    load.add_argument("--spawn-rate", type=float, help="users started per second")
    load.add_argument("--duration", help="measured time after the warm-up, e.g. 60s")
    load.add_argument("--warmup", help="time at the start left out of statistics, e.g. 5s")
    load.add_argument("--shape", choices=["constant", "step", "spike"], help="closed-loop users")
    load.add_argument(
        "--open-loop", action="store_true", default=None,
        help="constant arrival rate (--rate); latency measured from the intended send time",
    )  # fmt: skip
    load.add_argument("--rate", type=float, help="open loop: requests/s; closed loop: per user")
    load.add_argument("--arrivals", choices=["poisson", "fixed"], help="gaps between arrivals")
    load.add_argument(
        "--max-outstanding", type=int,
        help="open loop: requests in flight at most (later arrivals are dropped and reported)",
    )  # fmt: skip
    load.add_argument("--path", help="endpoint to load (default /predict)")
    load.add_argument(
        "--texts",
        help="labelled split (default: test.tsv in $TUNESERVE_DATA or ../shared/data/sst2)",
    )
    _add_column_arguments(load)
    load.add_argument(
        "--model", help="export run whose train run names the columns (default: with --serve, the "
        "serving config's control)",
    )  # fmt: skip
    load.add_argument("--feedback", type=float, help="probability of feedback posts")
    load.add_argument("--feedback-delay", help="time from answer to its feedback, e.g. 0.5s")
    load.add_argument(
        "--label-names", help="JSON dataset label -> model label (default: the model's, or "
        "GET /models)",
    )  # fmt: skip
    load.add_argument("--seed", type=int, help="seed of arrivals and text draws")
    load.add_argument("--out", help="reports go to OUT/RUN_ID/ (default artifacts/loadtest)")
    load.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    load.add_argument(
        "--processes", type=int, help="load-generating processes on this machine (default 1): "
        "N > 1 runs Locust's master and N workers; with --worker, N workers for that master",
    )  # fmt: skip
    load.add_argument("--master", action="store_true",
                      help="several machines: this process is Locust's master (runs no users, "
                      "merges the workers' histograms, reports)")  # fmt: skip
    load.add_argument("--worker", action="store_true",
                      help="several machines: run users for the master at --master-host (its "
                      "config decides the load; --texts names this machine's copy)")  # fmt: skip
    load.add_argument("--expect-workers", type=int,
                      help="--master: worker processes to wait for (default 1)")  # fmt: skip
    load.add_argument("--master-host", help="--worker: the master's address (default 127.0.0.1)")
    load.add_argument("--master-port", type=int, help="the master's port (default 5557)")
    load.add_argument("--master-bind-host", help="--master: interface to listen on (default *)")
    load.add_argument(
        "--raw-requests", action="store_true", default=None,
        help="also stream every request to requests-WORKER.jsonl in the run folder",
    )  # fmt: skip
    _add_gate_arguments(load)
    load.set_defaults(handler=_loadtest)


def _add_gate_arguments(load: argparse.ArgumentParser) -> None:
    """The SLO gate, find-max and --serve: how the run is judged and what it starts."""
    load.add_argument(
        "--slo",
        help="e.g. p99=100ms,fail=1%% (also p50, p90, p95, p99.9, max, rps); exit code 3 if broken",
    )
    load.add_argument(
        "--find-max", action="store_true", help="search the highest open-loop rate meeting --slo"
    )
    load.add_argument("--max-rate", type=float, default=1000.0, help="find-max: highest rate tried")
    load.add_argument(
        "--find-max-precision", type=float, default=0.1,
        help="find-max: stop when the bracket is within this fraction of its top",
    )  # fmt: skip
    load.add_argument(
        "--serve", metavar="CONFIG",
        help="start `tuneserve serve --config CONFIG` on --host first, stop it afterwards",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The `tuneserve` parser: one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="tuneserve", description="Fine-tune, export and serve transformer text classifiers."
    )
    parser.add_argument("--version", action="version", version=f"tuneserve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_compare, _add_export, _add_bench_model, _add_serve,
                _add_ab_report, _add_loadtest):  # fmt: skip
        add(sub)
    for module in COMMAND_MODULES:  # the subcommands of tuneserve/commands/
        module.add(sub)
    return parser


INTERRUPTED = "interrupted: nothing of the unfinished run was kept"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; a TuneserveError becomes one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # reports quote their command
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
    except KeyboardInterrupt:  # or SIGTERM
        print(getattr(args, "interrupted", INTERRUPTED), file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
