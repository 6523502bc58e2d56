"""The export stage's config: profile, ONNX, quantisation, parity gates and evaluation policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tuneserve.config import StrictConfig

Profile = Literal["cpu-int8", "cpu-fp32", "gpu-fp16"]
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


class GateConfig(StrictConfig):
    """Parity and accuracy gates; results are recorded in the manifest."""

    onnx_max_abs_diff: float = Field(
        1e-4, description="fp32 ONNX vs PyTorch: largest allowed absolute logit difference"
    )
    parity_examples: int = Field(256, description="real dev examples for the fp32 parity check")
    min_agreement: float = Field(
        0.97, description="quantised vs fp32: smallest allowed share of equal predictions"
    )
    max_accuracy_drop: float = Field(
        0.005,
        description="quantised vs fp32: largest allowed dev accuracy drop (0.005 = 0.5 points)",
    )
    dev_examples: int = Field(0, ge=0, description="dev examples for the quantised gate (0 = all)")

    @field_validator("onnx_max_abs_diff", "max_accuracy_drop")
    @classmethod
    def _non_negative(cls, value: float, info) -> float:  # type: ignore[no-untyped-def]
        if value < 0:
            raise ValueError(f"{info.field_name} must be non-negative, got {value}")
        return value

    @field_validator("min_agreement")
    @classmethod
    def _share(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError(f"min_agreement must be in [0, 1], got {value}")
        return value

    @field_validator("parity_examples")
    @classmethod
    def _examples(cls, value: int) -> int:
        if value <= 0:
            raise ValueError(f"parity_examples must be positive, got {value}")
        return value


class PolicyConfig(StrictConfig):
    """How the service feeds the model; the gates evaluate the same way."""

    batch_size: int = Field(1, description="texts per model call (the CPU service runs batch 1)")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads (0 = all cores)")

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int) -> int:
        if value <= 0:
            raise ValueError(f"batch_size must be positive, got {value}")
        return value


class ExportConfig(StrictConfig):
    """Everything `tuneserve export` needs besides the train run."""

    profile: Profile | Literal["auto"] = Field(
        "auto", description="cpu-int8, cpu-fp32, gpu-fp16; auto: gpu-fp16 with CUDA, else cpu-int8"
    )
    opset: int = Field(17, description="ONNX opset")
    quantization: QuantizationConfig = Field(
        default_factory=QuantizationConfig, description="INT8 settings"
    )
    gates: GateConfig = Field(default_factory=GateConfig, description="parity and accuracy gates")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="evaluation policy")
    output_root: str = Field("artifacts", description="outputs go to ROOT/export/<run_id>/")

    @field_validator("opset")
    @classmethod
    def _opset(cls, value: int) -> int:
        if not 14 <= value <= 21:
            raise ValueError(f"opset must be between 14 and 21, got {value}")
        return value
