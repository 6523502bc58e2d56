"""Summarise finished train runs as a Markdown table plus JSON, with the machine they ran on.

Usage: python benchmarks/train_report.py RUN_DIR [RUN_DIR ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tuneserve.details import TrainDetails
from tuneserve.machine import describe_machine
from tuneserve.manifest import read_manifest


def summarise(run: Path) -> dict[str, object]:
    manifest = read_manifest(run, stage="train")
    metrics = json.loads((run / manifest.artifacts["metrics"].path).read_text())
    t, tr, p = metrics["test"], metrics["training"], metrics["parameters"]
    return {
        "run": manifest.run_id,
        "method": manifest.details_as(TrainDetails).method,
        "test_accuracy": t["accuracy"],
        "test_f1_macro": t["f1_macro"],
        "dev_best_accuracy": metrics["dev_best"].get("accuracy"),
        "train_examples_per_s": tr["examples_per_second"],
        "wall_s": tr["wall_seconds"],
        "steps": tr["steps"],
        "best_step": tr["best_step"],
        "stopped_early": tr["stopped_early"],
        "peak_rss_mb": tr["peak_rss_mb"],
        "trainable_percent": p["trainable_percent"],
        "device": tr["device"],
        "torch_threads": tr["torch_threads"],
        "config": manifest.config,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="write the rows and the machine here")
    args = parser.parse_args()
    rows = [summarise(r) for r in args.runs]
    print(
        "| run | method | test acc | test macro F1 | best dev acc | train ex/s | wall s | "
        "peak RSS MB | trainable % |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['run']} | {r['method']} | {r['test_accuracy']:.4f} | "
            f"{r['test_f1_macro']:.4f} | {r['dev_best_accuracy']:.4f} | "
            f"{r['train_examples_per_s']:.1f} | {r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['trainable_percent']:.2f} |"
        )
    info = describe_machine()
    print(
        f"\nMachine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"Python {info['python']}"
    )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
