"""What each INT8 step buys: export one train run with each step switched off, bench every export.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/int8_ablation.py --from artifacts/train/<run>

Each variant is a full `tuneserve export` (with the gates) followed by `tuneserve bench-model`
(PyTorch eager, ONNX fp32 and the variant, timed interleaved in one run). Speed ratios are
therefore measured against the PyTorch run of the same bench; compare them, not absolute times.
Writes artifacts/bench-int8/<run>/ablation.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from export.bench import run_bench
from export.config import ExportConfig
from export.run import run_export
from tuneserve.config import load_config
from tuneserve.machine import describe_machine

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "no smoothing": ['quantization.smoothing="off"'],
    "no block-wise FFN out": ['quantization.blockwise="none"'],
    "per-tensor embeddings": ['quantization.embeddings="per_tensor"'],
    "any MatMul may be block-wise": ['quantization.blockwise="all"'],
    "plain dynamic INT8 (all off)": [
        'quantization.smoothing="off"',
        'quantization.blockwise="none"',
        'quantization.embeddings="per_tensor"',
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True, help="a finished train run")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--sentences", type=int, default=600, help="batch-1 timed sentences")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    train = Path(args.source)
    out = Path("artifacts") / "bench-int8" / train.name
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        # no fallback: it would change what is measured; a variant that fails its gate says so
        fixed = ['profile="cpu-int8"', 'quantization.on_gate_failure="fail"']
        cfg = load_config(ExportConfig, None, [*overrides, *fixed])
        run_id = f"{train.name}-int8-" + name.split(" (")[0].replace(" ", "-")
        started = time.perf_counter()
        try:
            export_dir = run_export(train, cfg, run_id=run_id, overwrite=True)
        except Exception as exc:  # a failed gate is a result, not a crash
            rows.append({"variant": name, "overrides": overrides, "error": str(exc)})
            continue
        export_seconds = time.perf_counter() - started
        bench = json.loads(
            (run_bench(export_dir, args.sentences, str(out / run_id)) / "bench.json").read_text()
        )
        serving, fp32 = bench["models"]["serving-cpu-int8"], bench["models"]["onnx-fp32"]
        gate = json.loads((export_dir / "parity.json").read_text())["quantized_vs_fp32"]
        rows.append(
            {
                "variant": name,
                "overrides": overrides,
                "dev_agreement": gate["agreement"],
                "dev_logit_rms_diff": gate["logit_rms_diff"],
                "test_accuracy_fp32": fp32["accuracy"],
                "test_accuracy": serving["accuracy"],
                "test_drop_points": 100 * (fp32["accuracy"] - serving["accuracy"]),
                "test_agreement_with_pytorch": serving["agreement_with_pytorch"],
                "batch1_p50_ms": serving["batch1_p50_ms"],
                "speedup_p50": serving["speedup_p50"],
                "throughput_ratio": serving["throughput_ratio"],
                "file_mb": serving["file_mb"],
                "size_ratio": bench["size_ratio_serving_vs_fp32"],
                "export_seconds": round(export_seconds, 1),
            }
        )
    report = {"train_run": train.name, "machine": describe_machine(), "variants": rows}
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"INT8 ablation of {train.name}; {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores; speed ratios against PyTorch eager in the same "
        "bench.",
        "",
        "| variant | dev agreement | dev logit RMS diff | test accuracy | test drop (points) | "
        "test agreement w/ PyTorch | p50 ms | p50 speed-up | batch-32 ratio | file MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'][:120]} |||||||||")
            continue
        lines.append(
            f"| {r['variant']} | {r['dev_agreement']:.4f} | {r['dev_logit_rms_diff']:.3f} | "
            f"{r['test_accuracy']:.4f} | {r['test_drop_points']:.2f} | "
            f"{r['test_agreement_with_pytorch']:.4f} | {r['batch1_p50_ms']:.2f} | "
            f"{r['speedup_p50']:.2f}x | {r['throughput_ratio']:.2f}x | {r['file_mb']:.1f} |"
        )
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"int8 ablation -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
