"""Distilled students against their LoRA teacher, all INT8: SST-2 test accuracy, b1 p50, b32 rate.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/distill_bench.py --layers 3 2 --student-train 12000

1. the teacher: LoRA on all-MiniLM-L6-v2 with configs/sst2-demo.toml (3,000 SST-2 train
   sentences, 500 dev), unless ``--teacher RUN`` names a finished train run to reuse;
2. one student per ``--layers`` K: `tuneserve train --method distill --teacher ...` with the
   demo config, ``distill.layers=K`` and ``--student-train`` SST-2 train sentences (the teacher
   labels them: a student may read more text than its teacher was trained on);
3. `tuneserve export --profile cpu-int8` of the teacher and of every student (gates included);
4. in this one process, interleaved (export.bench.measure, the timing of `tuneserve
   bench-model`): accuracy at batch 1 on the 872 test sentences, batch-1 p50 over ``--timed``
   of them, batch-32 throughput over all; ratios against the teacher.

Writes artifacts/bench-distill/RUN_ID/distill.json and distill.md and prints the table. On a
shared machine compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from export.bench import _onnx_runner, measure
from tuneserve.cli import main as tuneserve
from tuneserve.details import ExportDetails, TrainDetails
from tuneserve.inference import load_tokenizer
from tuneserve.machine import describe_machine
from tuneserve.manifest import read_manifest, sha256_file

CONFIG = "configs/sst2-demo.toml"


def step(argv: list[str]) -> float:
    """Run one `tuneserve` command in process; its wall seconds."""
    started = time.perf_counter()
    if tuneserve(argv) != 0:
        raise SystemExit(f"`tuneserve {' '.join(argv)}` failed")
    return round(time.perf_counter() - started, 1)


def export(train: Path, reuse: bool = False) -> tuple[Path, float]:
    """The cpu-int8 export of ``train`` (with ``reuse``: an existing one made from this very
    train run, hashes checked, is kept)."""
    out = Path("artifacts/export") / f"{train.name}-cpu-int8"
    if reuse and (out / "manifest.json").is_file():
        made_from = read_manifest(out, stage="export").inputs[0]
        if made_from.sha256 == sha256_file(train / "manifest.json"):
            return out, 0.0
    seconds = step(["export", "--from", str(train), "--profile", "cpu-int8", "--overwrite"])
    return out, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", default="distill-bench", help="prefix of every run")
    parser.add_argument(
        "--teacher", help="reuse this finished train run as the teacher (and its cpu-int8 export "
        "in artifacts/export/, if one was made from it)",
    )  # fmt: skip
    parser.add_argument("--layers", type=int, nargs="+", default=[3], help="student sizes")
    parser.add_argument(
        "--student-train", type=int, default=3000, help="SST-2 train sentences of each student"
    )
    parser.add_argument("--student-epochs", type=float, default=3.0, help="student epochs")
    parser.add_argument("--timed", type=int, default=600, help="batch-1 timed sentences")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch training threads (0: all cores)"
    )
    parser.add_argument(
        "--student-set", action="append", default=[], metavar="KEY=VALUE",
        help="more --set overrides for the students, e.g. distill.freeze_word_embeddings=true",
    )  # fmt: skip
    parser.add_argument(
        "--reuse", action="store_true",
        help="keep students (and exports) already made under these names: 0 s in the table",
    )  # fmt: skip
    parser.add_argument(
        "--also", nargs="*", default=[], metavar="RUN",
        help="finished student runs (e.g. of an earlier invocation) to time with the others",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    args = parser.parse_args()
    threads = ["--set", f"train.num_threads={args.threads}"]
    logging.basicConfig(level=logging.WARNING)
    rows: dict[str, dict[str, Any]] = {}
    seconds: dict[str, dict[str, float]] = {}
    if args.teacher:
        teacher = Path(args.teacher)
        read_manifest(teacher, stage="train")  # reads with this code, hashes checked
        seconds["teacher"] = {}
    else:
        train_s = step(["train", "--config", CONFIG, "--method", "lora",
                        "--run-id", args.run_id, "--overwrite", *threads])  # fmt: skip
        teacher = Path("artifacts/train") / f"{args.run_id}-lora"
        seconds["teacher"] = {"train_s": train_s}
    exports = {"teacher": export(teacher, reuse=bool(args.teacher))}
    seconds["teacher"]["export_s"] = exports["teacher"][1]
    trains = {"teacher": teacher}
    for k in args.layers:
        name = f"student-L{k}"
        trains[name] = Path("artifacts/train") / f"{args.run_id}-L{k}-distill"
        if args.reuse and (trains[name] / "manifest.json").is_file():
            read_manifest(trains[name], stage="train")
            exports[name] = export(trains[name], reuse=True)
            seconds[name] = {"train_s": 0.0, "export_s": exports[name][1]}
            continue
        train_s = step(
            ["train", "--config", CONFIG, "--method", "distill", "--teacher", str(teacher),
             "--run-id", f"{args.run_id}-L{k}", "--overwrite",
             "--set", f"distill.layers={k}", "--set", f"distill.epochs={args.student_epochs}",
             "--set", f"data.max_train_examples={args.student_train}", *threads,
             *[x for kv in args.student_set for x in ("--set", kv)]]
        )  # fmt: skip
        exports[name] = export(trains[name])
        seconds[name] = {"train_s": train_s, "export_s": exports[name][1]}

    for extra in args.also:  # finished students of an earlier run, timed in this same process
        trains[Path(extra).name] = Path(extra)
        exports[Path(extra).name] = export(Path(extra), reuse=True)
        seconds[Path(extra).name] = {"export_s": exports[Path(extra).name][1]}
    first = read_manifest(exports["teacher"][0], stage="export").details_as(ExportDetails)
    tokenizer = load_tokenizer(exports["teacher"][0] / first.tokenizer, first.max_length)
    test = trains["teacher"] / "eval" / "test.jsonl"
    examples = [json.loads(line) for line in test.read_text(encoding="utf-8").splitlines()]
    texts, labels = [e["text"] for e in examples], [int(e["label"]) for e in examples]
    runners, sizes = {}, {}
    for name, (directory, _) in exports.items():
        details = read_manifest(directory, stage="export").details_as(ExportDetails)
        if (details.input_names, details.max_length) != (first.input_names, first.max_length):
            raise SystemExit(f"{name} does not take the teacher's inputs: cannot time it alike")
        runners[name], sizes[name] = _onnx_runner(directory / details.serving_model)
    results = measure(
        runners, tokenizer, first.input_names, texts, labels, args.timed, first.pad_token_id,
        rounds=args.rounds,
    )  # fmt: skip
    ref = results["teacher"]
    for name, r in results.items():
        train = read_manifest(trains[name], stage="train")
        info = train.details_as(TrainDetails)
        r.pop("predictions")
        rows[name] = {
            "layers": info.distill.layers if info.distill else 6,
            "train_examples": train.config["data"]["max_train_examples"],
            "test_accuracy_pytorch": train.metrics["test_accuracy"],
            **r,
            "accuracy_lost_points": round(100 * (ref["accuracy"] - r["accuracy"]), 2),
            "p50_speedup": ref["batch1_p50_ms"] / r["batch1_p50_ms"],
            "throughput_ratio": r["batch32_sentences_per_s"] / ref["batch32_sentences_per_s"],
            "file_mb": round(sizes[name] / 2**20, 2),
            "train_loop_s": json.loads((trains[name] / "metrics.json").read_text())["training"][
                "wall_seconds"
            ],
            **seconds[name],
        }
    report = {
        "teacher_run": teacher.name,
        "test_examples": len(texts),
        "timed_sentences": min(args.timed, len(texts)),
        "timing": f"interleaved: {args.rounds} rounds, each model on its own slice of the texts",
        "machine": describe_machine(),
        "ort_intra_op_threads": os.cpu_count(),
        "training_threads": args.threads or os.cpu_count(),
        "student_overrides": args.student_set,
        "target": ">= 1.8x the teacher's INT8 batch-32 throughput at <= 1.5 points accuracy lost",
        "models": rows,
    }
    out = Path("artifacts/bench-distill") / args.run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill.json").write_text(json.dumps(report, indent=2) + "\n")
    table = to_markdown(report)
    (out / "distill.md").write_text(table + "\n")
    print(table)
    print(f"distill bench -> {out}")
    return 0


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Teacher {report['teacher_run']}; {report['test_examples']} SST-2 test sentences "
        f"(accuracy at batch 1, INT8), batch-1 p50 over {report['timed_sentences']}; "
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores",
        "",
        "| model | layers | train sentences | test acc (PyTorch) | test acc (INT8) | points lost "
        "| b1 p50 ms | b1 p99 ms | b32 sent/s | p50 speed-up | throughput ratio | file MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["models"].items():
        lines.append(
            f"| {name} | {r['layers']} | {r['train_examples']} | {r['test_accuracy_pytorch']:.4f} "
            f"| {r['accuracy']:.4f} | {r['accuracy_lost_points']:.2f} | {r['batch1_p50_ms']:.2f} "
            f"| {r['batch1_p99_ms']:.2f} | {r['batch32_sentences_per_s']:.0f} "
            f"| {r['p50_speedup']:.2f}x | {r['throughput_ratio']:.2f}x | {r['file_mb']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
