"""`tuneserve bench-model`: PyTorch eager vs ONNX fp32 vs the serving model, measured in one run."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.model import PooledClassifier
from tuneserve.details import ExportDetails
from tuneserve.errors import ManifestError
from tuneserve.inference import encode_batch, load_tokenizer, make_session
from tuneserve.machine import describe_machine
from tuneserve.manifest import Manifest, read_manifest
from tuneserve.memory import memory_figures, rss_bytes
from tuneserve.percentiles import percentile

log = logging.getLogger(__name__)
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]
ROUNDS = 5  # interleaved timing rounds


def _train_run(manifest: Manifest) -> Path:
    entry = next((i for i in manifest.inputs if i.role == "train_run"), None)
    if entry is None:
        raise ManifestError(f"export {manifest.run_id} does not record its train run")
    return Path(entry.path).parent


def _pytorch_runner(export_dir: Path, details: dict[str, Any]) -> tuple[Runner, int]:
    from safetensors.torch import load_file
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(export_dir / "merged"), attn_implementation="eager")
    head = load_file(str(export_dir / "merged" / "head.safetensors"))
    model = PooledClassifier(encoder, details["pooling"], head["weight"], head["bias"]).eval()
    size = sum(p.stat().st_size for p in (export_dir / "merged").glob("*.safetensors"))

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()

    return run, size


def _onnx_runner(path: Path, provider: str = "cpu") -> tuple[Runner, int]:
    session = make_session(path, provider=provider)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], feed)[0]

    return run, path.stat().st_size


def measure(
    runners: dict[str, Runner],
    tokenizer: Any,
    names: list[str],
    texts: list[str],
    labels: list[int],
    timed: int,
    pad_id: int,
    rounds: int = ROUNDS,
) -> dict[str, dict[str, Any]]:
    """Accuracy (batch 1), batch-1 latency percentiles, batch-32 throughput (pad to longest).

    Timing is interleaved: each of ``rounds`` rounds times every model on its own slice of the
    texts (after a short warm-up), so a noisy neighbour slows all models alike and the ratios
    stay fair on a shared machine.
    """
    results: dict[str, dict[str, Any]] = {}
    for name, run in runners.items():
        log.info("accuracy of %s", name)
        preds = [int(run(encode_batch(tokenizer, [t], names, pad_id)).argmax(1)[0]) for t in texts]
        results[name] = {
            "accuracy": float(np.mean(np.asarray(preds) == np.asarray(labels))),
            "predictions": preds,
        }
    singles = [encode_batch(tokenizer, [t], names, pad_id) for t in texts[:timed]]
    batches = [
        encode_batch(tokenizer, texts[i : i + 32], names, pad_id) for i in range(0, len(texts), 32)
    ]
    latencies: dict[str, list[float]] = {name: [] for name in runners}
    busy = dict.fromkeys(runners, 0.0)
    batched: dict[str, dict[int, np.ndarray]] = {name: {} for name in runners}
    order = list(runners)
    for r in range(rounds):
        order = order[1:] + order[:1]  # a different model goes first each round
        for name in order:
            run = runners[name]
            for feed in singles[:5]:
                run(feed)
            for feed in singles[r::rounds]:
                start = time.perf_counter()
                run(feed)
                latencies[name].append((time.perf_counter() - start) * 1000)
            outputs = []
            start = time.perf_counter()
            for feed in batches[r::rounds]:
                outputs.append(run(feed))
            busy[name] += time.perf_counter() - start
            for index, logits in zip(range(r, len(batches), rounds), outputs, strict=True):
                batched[name][index] = logits.argmax(1)
    for name in runners:
        results[name] |= {
            "batch1_p50_ms": percentile(latencies[name], 50),  # nearest rank
            "batch1_p99_ms": percentile(latencies[name], 99),
            "batch32_sentences_per_s": len(texts) / busy[name],
            # dynamic INT8 answers shift with batch composition; fp32 ones do not
            "batch32_agreement_with_batch1": float(
                np.mean(
                    np.concatenate([batched[name][i] for i in range(len(batches))])
                    == np.asarray(results[name]["predictions"])
                )
            ),
        }
    return results


def run_bench(export_dir: Path, sentences: int = 600, out: str | None = None) -> Path:
    """Benchmark every model of an export run; write bench.json, bench.md, bench.png."""
    import onnxruntime as ort

    manifest = read_manifest(export_dir, stage="export")
    details = manifest.details_as(ExportDetails).model_dump()
    train_dir = _train_run(manifest)
    train = read_manifest(train_dir, stage="train")
    rows = [
        json.loads(x)
        for x in (train_dir / train.artifacts["eval_test"].path)
        .read_text(encoding="utf-8")
        .splitlines()
        if x
    ]
    texts, labels = [r["text"] for r in rows], [int(r["label"]) for r in rows]
    tokenizer = load_tokenizer(export_dir / details["tokenizer"], int(details["max_length"]))
    names, pad_id = list(details["input_names"]), int(details["pad_token_id"])

    candidates: list[tuple[str, Callable[[], tuple[Runner, int]]]] = [
        ("pytorch-fp32-eager", lambda: _pytorch_runner(export_dir, details)),
        ("onnx-fp32", lambda: _onnx_runner(export_dir / details["fp32_model"])),
    ]
    if details["serving_model"] != details["fp32_model"]:
        label = f"serving-{details['profile']}"
        provider = "cuda" if details["profile"] == "gpu-fp16" else "cpu"
        if provider == "cpu" or "CUDAExecutionProvider" in ort.get_available_providers():
            candidates.append(
                (label, lambda: _onnx_runner(export_dir / details["serving_model"], provider))
            )
    runners, sizes, grown = {}, {}, {}
    for name, build in candidates:
        before = rss_bytes()
        runners[name], sizes[name] = build()
        grown[name] = rss_bytes() - before
    log.info("benchmarking %s", ", ".join(runners))
    results = measure(runners, tokenizer, names, texts, labels, sentences, pad_id)
    for name, r in results.items():
        r["file_mb"] = round(sizes[name] / 2**20, 2)
        r["rss_growth_at_load_mib"] = round(grown[name] / 2**20, 1)
    reference = results["pytorch-fp32-eager"]
    for r in results.values():
        r["agreement_with_pytorch"] = float(
            np.mean(np.asarray(r["predictions"]) == np.asarray(reference["predictions"]))
        )
        r["speedup_p50"] = reference["batch1_p50_ms"] / r["batch1_p50_ms"]
        r["throughput_ratio"] = r["batch32_sentences_per_s"] / reference["batch32_sentences_per_s"]
    for r in results.values():
        r.pop("predictions")
    report = {
        "export_run": manifest.run_id,
        "profile": details["profile"],
        "test_examples": len(texts),
        "timed_sentences": min(sentences, len(texts)),
        "timing": f"interleaved: {ROUNDS} rounds, each model timed on its own slice of the texts",
        "threads": {"torch": torch.get_num_threads(), "onnxruntime_intra_op": os.cpu_count()},
        "machine": describe_machine(),
        "models": results,
        # this process after timing every model (PyTorch included): an upper bound for one of
        # them; a serving worker's own figure is in a load-test report (server_memory)
        "process_memory": memory_figures(cuda=any(n == "serving-gpu-fp16" for n in runners)),
        "size_ratio_serving_vs_fp32": results[list(results)[-1]]["file_mb"]
        / results["onnx-fp32"]["file_mb"],
    }
    target = Path(out) if out else Path("artifacts") / "bench-model" / manifest.run_id
    target.mkdir(parents=True, exist_ok=True)
    (target / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (target / "bench.md").write_text(markdown)
    plot(report, target / "bench.png")
    print(markdown)
    print(f"bench-model -> {target}")
    return target


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Export {report['export_run']} ({report['profile']}); {report['test_examples']} "
        f"texts of the train run's test split, batch-1 latency over {report['timed_sentences']}; "
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores; torch threads "
        f"{report['threads']['torch']}, ORT intra-op threads "
        f"{report['threads']['onnxruntime_intra_op']}.",
        "",
        "| model | accuracy | agreement w/ PyTorch | batch-1 p50 ms | batch-1 p99 ms | "
        "batch-32 texts/s | batch-32 agreement w/ batch 1 | file MB | p50 speed-up | "
        "throughput ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["models"].items():
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['agreement_with_pytorch']:.4f} | "
            f"{r['batch1_p50_ms']:.2f} | {r['batch1_p99_ms']:.2f} | "
            f"{r['batch32_sentences_per_s']:.0f} | {r['batch32_agreement_with_batch1']:.4f} | "
            f"{r['file_mb']:.1f} | "
            f"{r['speedup_p50']:.2f}x | {r['throughput_ratio']:.2f}x |"
        )
    memory = report.get("process_memory")
    if memory:
        cuda = "".join(f", {d} {mib:.0f} MiB" for d, mib in memory.get("cuda_mib", {}).items())
        lines += [
            "",
            f"Memory of this benchmark process (every model loaded, PyTorch included): "
            f"RSS {memory['rss_mib']:.0f} MiB, peak {memory['peak_rss_mib']:.0f} MiB{cuda}.",
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    models = report["models"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(
        axes,
        ("batch1_p50_ms", "batch32_sentences_per_s", "file_mb"),
        ("batch-1 p50 latency (ms)", "batch-32 throughput (texts/s)", "file size (MB)"),
        strict=True,
    ):
        ax.bar(
            names,
            [models[n][key] for n in names],
            color=["#888", "#4a7", "#37c", "#c73"][: len(names)],
        )
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"{report['export_run']}: {report['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
