"""`tuneserve export`: merge, export, optimise, quantise, gate, and write the export run."""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportConfig
from export.model import TrainedModel, load_merged, save_merged
from export.onnx_graph import LOGITS, append_head, export_encoder
from export.optimize import integer_op_counts, optimize_graph
from export.parity import fp32_parity
from export.quantize import DevSet, fp16_check, quantize_gated
from tuneserve.details import (
    ExportDetails,
    Fp32Parity,
    ParityReport,
    Profile,
    Quantization,
    ServingPolicy,
    TrainDetails,
)
from tuneserve.errors import ManifestError, ParityError
from tuneserve.inference import load_tokenizer, make_session, session_logits
from tuneserve.manifest import (
    Manifest,
    build_manifest,
    input_entry,
    read_manifest,
    run_directory,
    write_json_atomic,
    write_manifest,
)

log = logging.getLogger(__name__)

LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "tokenizers",
)
PROVIDERS = {
    "cpu-int8": ["CPUExecutionProvider"],
    "cpu-fp32": ["CPUExecutionProvider"],
    "gpu-fp16": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


@dataclass(frozen=True)
class Built:
    """What building the models found out, for the manifest."""

    input_names: list[str]
    fused: dict[str, int]
    parity: ParityReport
    serving_model: str
    quantization: Quantization | None = None
    integer_ops: dict[str, int] | None = None


def resolve_profile(profile: str) -> Profile:
    """The configured profile, or for auto: gpu-fp16 when CUDA is visible, else cpu-int8."""
    if profile != "auto":
        return profile  # type: ignore[return-value]
    import torch

    return "gpu-fp16" if torch.cuda.is_available() else "cpu-int8"


def read_examples(path: Path) -> tuple[list[str], list[int]]:
    """The JSON-lines split a train run wrote (text, label id)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def _artifact(manifest: Manifest, run_dir: Path, role: str) -> Path:
    if role not in manifest.artifacts:
        raise ManifestError(
            f"{run_dir} has no {role!r} artifact: train it again with this version of tuneserve"
        )
    return run_dir / manifest.artifacts[role].path


def run_export(
    train_dir: Path, cfg: ExportConfig, run_id: str | None = None, overwrite: bool = False
) -> Path:
    """Export one train run; returns the finished export directory."""
    from transformers import AutoTokenizer

    manifest = read_manifest(train_dir, stage="train")
    trained_details = manifest.details_as(TrainDetails)
    profile = resolve_profile(cfg.profile)
    trained = load_merged(train_dir, manifest)
    max_length = trained_details.model.max_length
    tok_dir = train_dir / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        raise ManifestError(f"{tok_dir} has no tokenizer.json: a fast tokenizer is required")
    pad_id = int(AutoTokenizer.from_pretrained(str(tok_dir)).pad_token_id or 0)
    tokenizer = load_tokenizer(tok_dir / "tokenizer.json", max_length)
    dev_texts, dev_labels = read_examples(_artifact(manifest, train_dir, "eval_dev"))
    if cfg.gates.dev_examples and len(dev_texts) > cfg.gates.dev_examples:
        dev_texts, dev_labels = (
            dev_texts[: cfg.gates.dev_examples],
            dev_labels[: cfg.gates.dev_examples],
        )
    run_id = run_id or f"{manifest.run_id}-{profile}"
    root = Path(cfg.output_root) / "export"
    with run_directory(root, run_id, overwrite=overwrite) as out:
        built = _build(out, trained, cfg, profile, tokenizer, pad_id, dev_texts, dev_labels)
        shutil.copytree(tok_dir, out / "tokenizer")
        artifacts = {
            f"{p.parent.name}/{p.name}": str(p.relative_to(out))
            for sub in ("merged", "tokenizer", "onnx")
            for p in sorted((out / sub).iterdir())
        }
        for name in ("parity.json", "quantization.json"):
            if (out / name).is_file():
                artifacts[name.removesuffix(".json")] = name
        details = export_details(manifest, trained, built, cfg, profile, pad_id)
        metrics = export_metrics(built.parity, profile, len(dev_texts))
        write_manifest(
            out,
            build_manifest(
                run_id=run_id,
                run_dir=out,
                config=cfg.model_dump(mode="json"),
                artifacts=artifacts,
                inputs=[input_entry("train_run", train_dir)],
                metrics=metrics,
                libraries=LIBRARIES,
                details=details,
            ),
        )
    serving = metrics.get("dev_accuracy_serving")
    print(
        f"export ({profile}): dev accuracy fp32 {metrics['dev_accuracy_fp32']:.4f}, serving "
        + (f"{serving:.4f}" if serving is not None else "not measured here (needs CUDA)")
        + f"; max |logit diff| fp32 vs PyTorch {metrics['onnx_max_abs_diff']:.2e}"
        + f" -> {root / run_id}"
    )
    return root / run_id


def export_details(
    manifest: Manifest,
    trained: TrainedModel,
    built: Built,
    cfg: ExportConfig,
    profile: Profile,
    pad_id: int,
) -> ExportDetails:
    """The export manifest's details: what the service loads, and how it was made."""
    train = manifest.details_as(TrainDetails)
    return ExportDetails(
        profile=profile,
        opset=cfg.opset,
        input_names=built.input_names,
        output_names=[LOGITS],
        serving_model=built.serving_model,
        fp32_model="onnx/model.fp32.onnx",
        tokenizer="tokenizer/tokenizer.json",
        id2label=train.id2label,
        label2id=train.label2id,
        max_length=train.model.max_length,
        pooling=train.model.pooling,
        pad_token_id=pad_id,
        base_model=train.base_model,
        train_method=train.method,
        train_run=manifest.run_id,
        merged_lora=trained.merged_lora,
        adapter_sha256=_sha_of(manifest, "adapter/adapter_model.safetensors"),
        head_sha256=_sha_of(manifest, "head"),
        quantization=built.quantization,
        provider_hints=PROVIDERS[profile],
        fused_operators=built.fused,
        integer_operators=built.integer_ops or {},
        parity=built.parity,
        serving_policy=ServingPolicy.model_validate(cfg.policy.model_dump()),
    )


def _sha_of(manifest: Manifest, role: str) -> str | None:
    entry = manifest.artifacts.get(role)
    return entry.sha256 if entry else None


def export_metrics(parity: ParityReport, profile: str, dev_examples: int) -> dict[str, Any]:
    """Headline figures for the manifest: parity, and the serving model's dev accuracy."""
    metrics: dict[str, Any] = {
        "onnx_max_abs_diff": parity.fp32_vs_pytorch.max_abs_diff,
        "dev_accuracy_fp32": parity.dev_accuracy_fp32,
        "dev_examples": dev_examples,
    }
    gate = parity.serving_gate()
    if profile == "cpu-fp32":
        metrics["dev_accuracy_serving"] = parity.dev_accuracy_fp32
    elif gate is not None:
        metrics |= {
            "dev_agreement": gate.agreement,
            "dev_accuracy_serving": gate.quantized_accuracy,
            "dev_accuracy_drop": gate.accuracy_drop,
        }
    return metrics


def _build(
    out: Path,
    trained: TrainedModel,
    cfg: ExportConfig,
    profile: str,
    tokenizer: Any,
    pad_id: int,
    dev_texts: list[str],
    dev_labels: list[int],
) -> Built:
    """Write merged/, onnx/, parity.json (and quantization.json) into ``out``."""
    (out / "merged").mkdir()
    (out / "onnx").mkdir()
    save_merged(trained, out / "merged")
    head = trained.model.classifier
    encoder_onnx = export_encoder(trained.model.encoder, out / "onnx", cfg.opset)
    raw = out / "onnx" / "model.raw.onnx"
    input_names = append_head(
        encoder_onnx,
        raw,
        trained.model.pooling,
        head.weight.detach().numpy(),
        head.bias.detach().numpy(),
    )
    encoder_onnx.unlink()
    fp32 = out / "onnx" / "model.fp32.onnx"
    fused = optimize_graph(raw, fp32, trained.model_type, trained.num_heads, trained.hidden_size)

    fp32_session = make_session(fp32, cfg.policy.intra_op_threads)
    sample = random.Random(0).sample(
        range(len(dev_texts)), min(len(dev_texts), cfg.gates.parity_examples)
    )
    vs_pytorch = Fp32Parity.model_validate(
        fp32_parity(
            trained.model,
            fp32_session,
            tokenizer,
            [dev_texts[i] for i in sample],
            cfg.gates.onnx_max_abs_diff,
            batch_size=8,
            pad_id=pad_id,
        )
    )
    if not vs_pytorch.passed:
        raise ParityError(
            f"fp32 ONNX differs from PyTorch by {vs_pytorch.max_abs_diff:.2e} (allowed "
            f"{cfg.gates.onnx_max_abs_diff:.0e}) on {len(sample)} dev examples"
        )
    batch = cfg.policy.batch_size
    fp32_logits = session_logits(fp32_session, tokenizer, dev_texts, batch, pad_id)
    dev = DevSet(dev_texts, dev_labels, tokenizer, pad_id, fp32_logits)
    parity = ParityReport(
        fp32_vs_pytorch=vs_pytorch,
        dev_accuracy_fp32=float((fp32_logits.argmax(1) == np.asarray(dev_labels)).mean()),
    )
    built = Built(input_names, fused, parity, "onnx/model.fp32.onnx")
    if profile == "cpu-int8":
        int8 = quantize_gated(out, fp32, cfg, dev)
        write_json_atomic(out / "quantization.json", int8.quantization.model_dump(mode="json"))
        parity = parity.model_copy(
            update={"quantized_vs_fp32": int8.gate, "quantization_attempts": int8.attempts}
        )
        built = Built(
            input_names,
            fused,
            parity,
            "onnx/model.int8.onnx",
            int8.quantization,
            integer_op_counts(out / "onnx" / "model.int8.onnx"),
        )
    elif profile == "gpu-fp16":
        fp16 = out / "onnx" / "model.fp16.onnx"
        optimize_graph(
            raw, fp16, trained.model_type, trained.num_heads, trained.hidden_size, fp16=True
        )
        parity = parity.model_copy(update={"fp16": fp16_check(fp16, cfg, dev)})
        built = Built(input_names, fused, parity, "onnx/model.fp16.onnx")
    raw.unlink()
    write_json_atomic(out / "parity.json", parity.model_dump(mode="json"))
    return built
