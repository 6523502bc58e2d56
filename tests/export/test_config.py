from __future__ import annotations

import pytest

from export.config import ExportConfig
from tuneserve.config import load_config
from tuneserve.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "gates.min_agreement=1.5",
            "gates.min_agreement: min_agreement must be in [0, 1], got 1.5",
        ),
        ("gates.max_accuracy_drop=-0.1", "max_accuracy_drop must be non-negative, got -0.1"),
        ("gates.parity_examples=0", "parity_examples must be positive, got 0"),
        ("opset=9", "opset must be between 14 and 21, got 9"),
        ("profile=tpu", "profile: Input should be 'auto', 'cpu-int8', 'cpu-fp32' or 'gpu-fp16'"),
        ("quantization.isa=sse", "quantization.isa: Input should be"),
        ("policy.batch_size=0", "batch_size must be positive, got 0"),
        ("quantization.block_size=100", "quantization.block_size: Input should be 32, 64, 128"),
        ("quantization.blockwise=ffn", "quantization.blockwise: Input should be 'ffn_output'"),
        ("quantization.calibration_examples=0", "calibration_examples must be positive"),
        ("gates.atol=1", "gates.atol: unknown key"),
    ],
)
def test_export_config_messages(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(ExportConfig, None, [override])


def test_defaults() -> None:
    cfg = ExportConfig()
    assert cfg.profile == "auto" and cfg.opset == 17
    assert cfg.gates.min_agreement == 0.97 and cfg.gates.max_accuracy_drop == 0.005
    q = cfg.quantization
    assert (q.smoothing, q.blockwise, q.block_size, q.embeddings) == (
        "auto",
        "ffn_output",
        128,
        "per_row",
    )
