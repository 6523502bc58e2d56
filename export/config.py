"""The export stage's config: profile, ONNX, quantisation, parity gates and evaluation policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuneserve.config import (
    ClosedUnit,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    StrictConfig,
    int_between,
)

Isa = Literal["auto", "avx512_vnni", "avx2", "arm64"]


class QuantizationConfig(StrictConfig):
    """Dynamic INT8 settings of the cpu-int8 profile."""

    isa: Isa = Field("auto", description="instruction-set preset; auto reads the CPU's flags")
    per_channel: bool = Field(True, description="one weight scale per output channel")
    on_gate_failure: Literal["fail", "fp32_ffn_output"] = Field(
        "fp32_ffn_output",
        description="when the INT8 gate fails: fail, or retry with the feed-forward output "
        "projections kept in fp32 and record it",
    )
    smoothing: Literal["auto", "off"] = Field(
        "auto",
        description="SmoothQuant-style migration of activation outliers into the weights before "
        "dynamic INT8, its strength chosen per node on calibration texts",
    )
    calibration_examples: PositiveInt = Field(
        256, description="the longest dev texts used to choose the smoothing (no labels used)"
    )
    blockwise: Literal["ffn_output", "all", "none"] = Field(
        "ffn_output",
        description="MatMuls quantised block-wise (8-bit MatMulNBits, activations per row and "
        "block) instead of per tensor: the feed-forward output projections, every MatMul, or none",
    )
    blockwise_share: ClosedUnit = Field(
        0.9,
        description="of those, block-wise only the most sensitive (each measured alone under "
        "per-tensor INT8 on the calibration texts), enough to cover this share of their logit "
        "error; 1 = all of them",
    )
    block_size: Literal[32, 64, 128, 256] = Field(
        128, description="block length along K for the block-wise MatMuls"
    )
    embeddings: Literal["per_row", "per_tensor"] = Field(
        "per_row",
        description="embedding tables int8 with one scale per row, or ONNX Runtime's one scale "
        "per table",
    )


class GateConfig(StrictConfig):
    """Parity and accuracy gates; results are recorded in the manifest."""

    onnx_max_abs_diff: NonNegativeFloat = Field(
        1e-4, description="fp32 ONNX vs PyTorch: largest allowed absolute logit difference"
    )
    parity_examples: PositiveInt = Field(
        256, description="real dev examples for the fp32 parity check"
    )
    min_agreement: ClosedUnit = Field(
        0.97, description="quantised vs fp32: smallest allowed share of equal predictions"
    )
    max_accuracy_drop: NonNegativeFloat = Field(
        0.005,
        description="quantised vs fp32: largest allowed dev accuracy drop (0.005 = 0.5 points)",
    )
    dev_examples: NonNegativeInt = Field(
        0, description="dev examples for the quantised gate (0 = all)"
    )


class PolicyConfig(StrictConfig):
    """How the service feeds the model; the gates evaluate the same way."""

    batch_size: PositiveInt = Field(
        1, description="texts per model call (the CPU service runs batch 1)"
    )
    intra_op_threads: NonNegativeInt = Field(0, description="ONNX Runtime threads (0 = all cores)")


class ExportConfig(StrictConfig):
    """Everything `tuneserve export` needs besides the train run."""

    profile: Literal["auto", "cpu-int8", "cpu-fp32", "gpu-fp16"] = Field(
        "auto", description="cpu-int8, cpu-fp32, gpu-fp16; auto: gpu-fp16 with CUDA, else cpu-int8"
    )
    opset: int_between(14, 21) = Field(17, description="ONNX opset")  # type: ignore[valid-type]
    quantization: QuantizationConfig = Field(
        default_factory=QuantizationConfig, description="INT8 settings"
    )
    gates: GateConfig = Field(default_factory=GateConfig, description="parity and accuracy gates")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="evaluation policy")
    output_root: str = Field("artifacts", description="outputs go to ROOT/export/<run_id>/")
