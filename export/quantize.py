"""Reduced-precision serving models gated on the dev split: INT8 step by step, and fp16."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportConfig, QuantizationConfig
from export.optimize import (
    blockwise_nodes,
    detect_isa,
    dynamic_nodes,
    ffn_output_nodes,
    most_sensitive,
    node_sensitivity,
    quantize_int8,
)
from export.parity import quantized_gate
from export.smoothing import smooth
from tuneserve.details import (
    Fp16Check,
    GateResult,
    Quantization,
    QuantizationAttempt,
    SmoothedNode,
    Smoothing,
)
from tuneserve.errors import ParityError
from tuneserve.inference import encode_batch, make_session, session_logits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevSet:
    """The labelled dev split every gate runs on, tokenised as the service does, with the fp32
    model's logits as the reference."""

    texts: list[str]
    labels: list[int]
    tokenizer: Any
    pad_id: int
    fp32_logits: np.ndarray

    def logits(self, session: Any, texts: list[str] | None = None, batch_size: int = 1) -> Any:
        """Logits of ``session`` on ``texts`` (default: the whole split)."""
        chosen = self.texts if texts is None else texts
        return session_logits(session, self.tokenizer, chosen, batch_size, self.pad_id)


@dataclass(frozen=True)
class Int8Result:
    """The INT8 model's settings, its final gate, and every try."""

    quantization: Quantization
    gate: GateResult
    attempts: list[QuantizationAttempt]


def quantize_gated(out: Path, fp32: Path, cfg: ExportConfig, dev: DevSet) -> Int8Result:
    """Write onnx/model.int8.onnx from ``fp32`` and gate it; ParityError when it fails."""
    q = cfg.quantization
    isa = detect_isa() if q.isa == "auto" else q.isa
    target = out / "onnx" / "model.int8.onnx"
    warn_if_gate_narrow(cfg, len(dev.texts))
    calibration = sorted(dev.texts, key=len, reverse=True)[: q.calibration_examples]
    blockwise, sensitivity = choose_blockwise(fp32, q, calibration, dev)
    source, smoothing = smooth_source(out, fp32, q, blockwise, calibration, dev)
    try:
        settings, excluded, attempts = quantize_with_fallback(
            source, target, fp32, isa, cfg, blockwise, dev
        )
    finally:
        if source != fp32:
            source.unlink(missing_ok=True)
    quantization = Quantization.model_validate(
        settings
        | {
            "smoothing": smoothing,
            "blockwise_sensitivity": sensitivity,
            "fallback_used": bool(excluded),
        }
    )
    gate = GateResult.model_validate(attempts[-1].model_dump(exclude={"nodes_kept_fp32"}))
    return Int8Result(quantization, gate, attempts)


def warn_if_gate_narrow(cfg: ExportConfig, examples: int) -> None:
    """Warn when the accuracy gate is only a few dev examples wide (chance decides near it)."""
    width = cfg.gates.max_accuracy_drop * examples
    if width < 5:
        log.warning(
            "the %.1f-point accuracy gate is %.1f of %d dev sentences wide: near it, chance "
            "decides (gate on more dev sentences: data.max_dev_examples at training)",
            100 * cfg.gates.max_accuracy_drop,
            width,
            examples,
        )


def choose_blockwise(
    fp32: Path, q: QuantizationConfig, calibration: list[str], dev: DevSet
) -> tuple[list[str], dict[str, float]]:
    """The MatMuls to quantise block-wise: the most sensitive share of the candidates, and the
    sensitivity of each candidate (empty when every candidate is taken)."""
    blockwise = blockwise_nodes(fp32, q.blockwise)
    if not (q.blockwise_share < 1 and len(blockwise) > 1):
        return blockwise, {}
    probe = calibration[:: max(1, len(calibration) // 64)]
    reference = dev.logits(make_session(fp32), probe)

    def logit_error(model: Path) -> float:
        return float(np.mean((dev.logits(make_session(model), probe) - reference) ** 2))

    sensitivity = node_sensitivity(fp32, blockwise, logit_error, q.per_channel)
    blockwise = most_sensitive(sensitivity, q.blockwise_share)
    log.info(
        "block-wise INT8 for %d of %d candidates: %s", len(blockwise), len(sensitivity), blockwise
    )
    return blockwise, sensitivity


def smooth_source(
    out: Path,
    fp32: Path,
    q: QuantizationConfig,
    blockwise: list[str],
    calibration: list[str],
    dev: DevSet,
) -> tuple[Path, Smoothing]:
    """The model to quantise: ``fp32`` itself, or a smoothed copy of it when smoothing is on."""
    if q.smoothing != "auto":
        return fp32, Smoothing(mode=q.smoothing)
    source = out / "onnx" / "model.smoothed.onnx"
    nodes = smooth(
        fp32,
        source,
        dynamic_nodes(fp32, blockwise),
        lambda session, outputs: _run_each(session, outputs, dev, calibration),
    )
    smoothing = Smoothing(
        mode="auto",
        calibration_examples=len(calibration),
        nodes={name: SmoothedNode.model_validate(choice) for name, choice in nodes.items()},
    )
    return source, smoothing


def quantize_with_fallback(
    source: Path,
    target: Path,
    fp32: Path,
    isa: str,
    cfg: ExportConfig,
    blockwise: list[str],
    dev: DevSet,
) -> tuple[dict[str, Any], list[str], list[QuantizationAttempt]]:
    """Quantise and gate; on failure, when configured, once more with the feed-forward output
    projections in fp32. Returns the settings, the nodes kept in fp32 and every try; raises
    ParityError when the last try fails its gate."""
    q = cfg.quantization
    attempts: list[QuantizationAttempt] = []
    excluded: list[str] = []
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
        gate = gate_against_fp32(target, "cpu", cfg, dev)
        attempts.append(QuantizationAttempt(nodes_kept_fp32=len(excluded), **gate.model_dump()))
        if gate.passed or excluded or q.on_gate_failure == "fail":
            break
        excluded = ffn_output_nodes(fp32)
        log.warning(
            "INT8 gate failed (%s): retrying with %d feed-forward output projections in fp32",
            "; ".join(gate.failures),
            len(excluded),
        )
    if not gate.passed:
        raise ParityError(
            f"INT8 model fails its gate on {gate.examples} dev examples: "
            + "; ".join(gate.failures)
            + (
                " (also with the feed-forward output projections in fp32): use --profile "
                "cpu-fp32, or gate on more dev sentences"
                if excluded
                else ": set quantization.on_gate_failure = 'fp32_ffn_output', or use --profile "
                "cpu-fp32"
            )
        )
    return settings, excluded, attempts


def fp16_check(fp16: Path, cfg: ExportConfig, dev: DevSet) -> Fp16Check:
    """Gate the fp16 model where CUDA is available; elsewhere record why it was not measured."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return Fp16Check(
            measured=False,
            reason="no CUDA execution provider on this machine; the fp16 model is built but its "
            "accuracy and speed are measured where a GPU exists",
        )
    gate = gate_against_fp32(fp16, "cuda", cfg, dev)
    if not gate.passed:
        raise ParityError("fp16 model fails its gate: " + "; ".join(gate.failures))
    return Fp16Check(measured=True, gate=gate)


def gate_against_fp32(model: Path, provider: str, cfg: ExportConfig, dev: DevSet) -> GateResult:
    """Run ``model`` on the dev split as the service would and gate it against fp32."""
    session = make_session(model, cfg.policy.intra_op_threads, provider)
    logits = dev.logits(session, batch_size=cfg.policy.batch_size)
    return GateResult.model_validate(
        quantized_gate(
            dev.fp32_logits,
            logits,
            dev.labels,
            cfg.gates.min_agreement,
            cfg.gates.max_accuracy_drop,
        )
    )


def _run_each(
    session: Any, outputs: list[str], dev: DevSet, texts: list[str]
) -> list[list[np.ndarray]]:
    """The named outputs for each text run alone (batch 1, as the CPU service runs)."""
    names = [i.name for i in session.get_inputs()]
    return [
        session.run(outputs, encode_batch(dev.tokenizer, [t], names, dev.pad_id)) for t in texts
    ]
