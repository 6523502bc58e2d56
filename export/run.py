"""`tuneserve export`: merge, export, optimise, quantise, gate, and write the export run."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportConfig, Profile
from export.model import load_merged, save_merged
from export.onnx_graph import LOGITS, append_head, export_encoder
from export.optimize import (
    blockwise_nodes,
    detect_isa,
    dynamic_nodes,
    ffn_output_nodes,
    integer_op_counts,
    most_sensitive,
    node_sensitivity,
    optimize_graph,
    quantize_int8,
)
from export.parity import fp32_parity, quantized_gate
from export.smoothing import smooth
from tuneserve.errors import ManifestError, ParityError
from tuneserve.inference import encode_batch, load_tokenizer, make_session, session_logits
from tuneserve.manifest import (
    Manifest,
    build_manifest,
    input_entry,
    read_manifest,
    run_directory,
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
    profile = resolve_profile(cfg.profile)
    trained = load_merged(train_dir, manifest)
    model_details = manifest.details["model"]
    max_length = int(model_details["max_length"])
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
        result = _build(out, trained, cfg, profile, tokenizer, pad_id, dev_texts, dev_labels)
        shutil.copytree(tok_dir, out / "tokenizer")
        artifacts = {
            f"{p.parent.name}/{p.name}": str(p.relative_to(out))
            for sub in ("merged", "tokenizer", "onnx")
            for p in sorted((out / sub).iterdir())
        }
        for name in ("parity.json", "quantization.json"):
            if (out / name).is_file():
                artifacts[name.removesuffix(".json")] = name
        details = {
            "profile": profile,
            "opset": cfg.opset,
            "input_names": result["input_names"],
            "output_names": [LOGITS],
            "serving_model": result["serving_model"],
            "fp32_model": "onnx/model.fp32.onnx",
            "tokenizer": "tokenizer/tokenizer.json",
            "id2label": manifest.details["id2label"],
            "label2id": manifest.details["label2id"],
            "max_length": max_length,
            "pooling": model_details["pooling"],
            "pad_token_id": pad_id,
            "base_model": manifest.details["base_model"],
            "train_method": manifest.details["method"],
            "merged_lora": trained.merged_lora,
            "adapter_sha256": _sha_of(manifest, "adapter/adapter_model.safetensors"),
            "head_sha256": _sha_of(manifest, "head"),
            "quantization": result.get("quantization"),
            "provider_hints": PROVIDERS[profile],
            "fused_operators": result["fused"],
            "integer_operators": result.get("integer_ops", {}),
            "parity": result["parity"],
            "serving_policy": cfg.policy.model_dump(),
            "train_run": manifest.run_id,
        }
        metrics = export_metrics(result["parity"], profile, len(dev_texts))
        write_manifest(
            out,
            build_manifest(
                stage="export",
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


def _sha_of(manifest: Manifest, role: str) -> str | None:
    entry = manifest.artifacts.get(role)
    return entry.sha256 if entry else None


def export_metrics(parity: dict[str, Any], profile: str, dev_examples: int) -> dict[str, Any]:
    """Headline figures for the manifest: parity, and the serving model's dev accuracy."""
    metrics: dict[str, Any] = {
        "onnx_max_abs_diff": parity["fp32_vs_pytorch"]["max_abs_diff"],
        "dev_accuracy_fp32": parity["dev_accuracy_fp32"],
        "dev_examples": dev_examples,
    }
    gate = parity.get("quantized_vs_fp32") or parity.get("fp16")
    if profile == "cpu-fp32":
        metrics["dev_accuracy_serving"] = parity["dev_accuracy_fp32"]
    elif gate and gate.get("measured", True):
        metrics |= {
            "dev_agreement": gate["agreement"],
            "dev_accuracy_serving": gate["quantized_accuracy"],
            "dev_accuracy_drop": gate["accuracy_drop"],
        }
    return metrics


def _build(
    out: Path,
    trained: Any,
    cfg: ExportConfig,
    profile: str,
    tokenizer: Any,
    pad_id: int,
    dev_texts: list[str],
    dev_labels: list[int],
) -> dict[str, Any]:
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
    threads, batch = cfg.policy.intra_op_threads, cfg.policy.batch_size

    fp32_session = make_session(fp32, threads)
    sample = random.Random(0).sample(
        range(len(dev_texts)), min(len(dev_texts), cfg.gates.parity_examples)
    )
    parity = {
        "fp32_vs_pytorch": fp32_parity(
            trained.model,
            fp32_session,
            tokenizer,
            [dev_texts[i] for i in sample],
            cfg.gates.onnx_max_abs_diff,
            batch_size=8,
            pad_id=pad_id,
        )
    }
    _write(out / "parity.json", parity)
    if not parity["fp32_vs_pytorch"]["passed"]:
        raise ParityError(
            f"fp32 ONNX differs from PyTorch by "
            f"{parity['fp32_vs_pytorch']['max_abs_diff']:.2e} (allowed "
            f"{cfg.gates.onnx_max_abs_diff:.0e}) on {len(sample)} dev examples"
        )
    fp32_logits = session_logits(fp32_session, tokenizer, dev_texts, batch, pad_id)
    parity["dev_accuracy_fp32"] = float((fp32_logits.argmax(1) == np.asarray(dev_labels)).mean())
    result: dict[str, Any] = {
        "input_names": input_names,
        "fused": fused,
        "parity": parity,
        "serving_model": "onnx/model.fp32.onnx",
    }
    if profile == "cpu-int8":
        result |= _quantize(
            out, fp32, cfg, tokenizer, pad_id, fp32_logits, dev_texts, dev_labels, parity
        )
    elif profile == "gpu-fp16":
        fp16 = out / "onnx" / "model.fp16.onnx"
        optimize_graph(
            raw, fp16, trained.model_type, trained.num_heads, trained.hidden_size, fp16=True
        )
        result["serving_model"] = "onnx/model.fp16.onnx"
        parity["fp16"] = _fp16_check(
            fp16, cfg, tokenizer, pad_id, fp32_logits, dev_texts, dev_labels
        )
    raw.unlink()
    _write(out / "parity.json", parity)
    return result


def _quantize(
    out: Path,
    fp32: Path,
    cfg: ExportConfig,
    tokenizer: Any,
    pad_id: int,
    fp32_logits: np.ndarray,
    texts: list[str],
    labels: list[int],
    parity: dict[str, Any],
) -> dict[str, Any]:
    q = cfg.quantization
    isa = detect_isa() if q.isa == "auto" else q.isa
    target = out / "onnx" / "model.int8.onnx"
    width = cfg.gates.max_accuracy_drop * len(texts)
    if width < 5:
        log.warning(
            "the %.1f-point accuracy gate is %.1f of %d dev sentences wide: near it, chance "
            "decides (gate on more dev sentences: data.max_dev_examples at training)",
            100 * cfg.gates.max_accuracy_drop,
            width,
            len(texts),
        )
    calibration = sorted(texts, key=len, reverse=True)[: q.calibration_examples]
    blockwise = blockwise_nodes(fp32, q.blockwise)
    sensitivity: dict[str, float] = {}
    if q.blockwise_share < 1 and len(blockwise) > 1:
        probe = calibration[:: max(1, len(calibration) // 64)]
        reference = session_logits(make_session(fp32), tokenizer, probe, 1, pad_id)

        def logit_error(model: Path) -> float:
            logits = session_logits(make_session(model), tokenizer, probe, 1, pad_id)
            return float(np.mean((logits - reference) ** 2))

        sensitivity = node_sensitivity(fp32, blockwise, logit_error, q.per_channel)
        blockwise = most_sensitive(sensitivity, q.blockwise_share)
        log.info(
            "block-wise INT8 for %d of %d candidates: %s",
            len(blockwise),
            len(sensitivity),
            blockwise,
        )
    source, smoothing = fp32, {"mode": q.smoothing}
    if q.smoothing == "auto":
        source = out / "onnx" / "model.smoothed.onnx"
        smoothing |= {
            "calibration_examples": len(calibration),
            "nodes": smooth(
                fp32,
                source,
                dynamic_nodes(fp32, blockwise),
                lambda session, outputs: _run_each(
                    session, outputs, tokenizer, calibration, pad_id
                ),
            ),
        }
    attempts: list[dict[str, Any]] = []
    excluded: list[str] = []
    try:
        while True:
            settings = quantize_int8(
                source,
                target,
                isa,
                q.per_channel,
                excluded,
                blockwise=[n for n in blockwise if n not in excluded],
                block_size=q.block_size,
                embeddings=q.embeddings,
            )
            gate = _gate_against_fp32(
                target, "cpu", cfg, tokenizer, pad_id, fp32_logits, texts, labels
            )
            attempts.append({"nodes_kept_fp32": len(excluded), **gate})
            if gate["passed"] or excluded or q.on_gate_failure == "fail":
                break
            excluded = ffn_output_nodes(fp32)
            log.warning(
                "INT8 gate failed (%s): retrying with %d feed-forward output projections in fp32",
                "; ".join(gate["failures"]),
                len(excluded),
            )
    finally:
        if source != fp32:
            source.unlink(missing_ok=True)
    settings["smoothing"] = smoothing
    settings["blockwise_sensitivity"] = sensitivity
    parity["quantized_vs_fp32"] = gate
    parity["quantization_attempts"] = attempts
    settings["fallback_used"] = bool(excluded)
    _write(out / "quantization.json", settings)
    if not gate["passed"]:
        _write(out / "parity.json", parity)
        raise ParityError(
            f"INT8 model fails its gate on {gate['examples']} dev examples: "
            + "; ".join(gate["failures"])
            + (
                " (also with the feed-forward output projections in fp32): use --profile "
                "cpu-fp32, or gate on more dev sentences"
                if excluded
                else ": set quantization.on_gate_failure = 'fp32_ffn_output', or use --profile "
                "cpu-fp32"
            )
        )
    return {
        "serving_model": "onnx/model.int8.onnx",
        "quantization": settings,
        "integer_ops": integer_op_counts(target),
    }


def _fp16_check(
    fp16: Path,
    cfg: ExportConfig,
    tokenizer: Any,
    pad_id: int,
    fp32_logits: np.ndarray,
    texts: list[str],
    labels: list[int],
) -> dict[str, Any]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {
            "measured": False,
            "reason": "no CUDA execution provider on this machine; the "
            "fp16 model is built but its accuracy and speed are measured where a GPU exists",
        }
    gate = _gate_against_fp32(fp16, "cuda", cfg, tokenizer, pad_id, fp32_logits, texts, labels)
    if not gate["passed"]:
        raise ParityError("fp16 model fails its gate: " + "; ".join(gate["failures"]))
    return {"measured": True, **gate}


def _gate_against_fp32(
    model: Path,
    provider: str,
    cfg: ExportConfig,
    tokenizer: Any,
    pad_id: int,
    fp32_logits: np.ndarray,
    texts: list[str],
    labels: list[int],
) -> dict[str, Any]:
    """Run ``model`` on the dev split as the service would and gate it against fp32."""
    session = make_session(model, cfg.policy.intra_op_threads, provider)
    logits = session_logits(session, tokenizer, texts, cfg.policy.batch_size, pad_id)
    return quantized_gate(
        fp32_logits, logits, labels, cfg.gates.min_agreement, cfg.gates.max_accuracy_drop
    )


def _run_each(
    session: Any, outputs: list[str], tokenizer: Any, texts: list[str], pad_id: int
) -> list[list[np.ndarray]]:
    """The named outputs for each text run alone (batch 1, as the CPU service runs)."""
    names = [i.name for i in session.get_inputs()]
    return [session.run(outputs, encode_batch(tokenizer, [t], names, pad_id)) for t in texts]


def _write(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
