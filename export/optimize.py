"""Graph optimisation (ONNX Runtime transformer fusions), fp16 conversion, dynamic INT8."""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path
from typing import Any

from tuneserve.errors import ModelError

log = logging.getLogger(__name__)

# Dynamic INT8 presets per instruction set (the same choices as Optimum's AutoQuantizationConfig):
# weights are signed int8 per channel; without VNNI, u8s8 products can saturate, so AVX2 uses
# reduce_range (7-bit weights).
ISA_PRESETS: dict[str, dict[str, Any]] = {
    "avx512_vnni": {"reduce_range": False},
    "avx2": {"reduce_range": True},
    "arm64": {"reduce_range": False},
}
# EmbedLayerNormalization and Gather: the embedding table is half of a MiniLM; int8 shrinks it 4x.
OPS_TO_QUANTIZE = ["MatMul", "Attention", "EmbedLayerNormalization", "Gather"]
# Feed-forward output projections, per naming style, as Optimum names the exported nodes.
_FFN_OUTPUT = re.compile(r"(layer\.\d+/output/dense/MatMul|ffn/lin2/MatMul)")


def detect_isa() -> str:
    """The best INT8 preset for this CPU."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "avx512_vnni"
    return "avx2"


def optimize_graph(
    source: Path, target: Path, model_type: str, num_heads: int, hidden: int, fp16: bool = False
) -> dict[str, int]:
    """Fuse attention, layer norm and GELU offline; for fp16 convert weights, keep fp32 I/O.

    Returns the fused operator counts.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        model = optimize_model(
            str(source),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden,
            opt_level=0,
            use_gpu=fp16,
        )
    except Exception as exc:  # the optimiser raises bare exceptions on graphs it cannot read
        raise ModelError(
            f"ONNX Runtime could not optimise {source.name} ({type(exc).__name__}: {exc})"
        ) from exc
    if fp16:
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(target))
    counts = model.get_fused_operator_statistics()
    log.info("fused operators (%s): %s", model_type, {k: v for k, v in counts.items() if v})
    return {k: int(v) for k, v in counts.items() if v}


def ffn_output_nodes(model_path: Path) -> list[str]:
    """MatMul nodes of the feed-forward output projections (kept fp32 by the fallback)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and _FFN_OUTPUT.search(n.name)]


def quantize_int8(
    source: Path, target: Path, isa: str, per_channel: bool, exclude: list[str]
) -> dict[str, Any]:
    """Symbolic shape inference (the quantiser needs it on fused graphs), then dynamic INT8."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred_path = target.with_name(target.stem + ".shapes.onnx")
    inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True)
    if inferred is None:
        raise ModelError(f"symbolic shape inference failed on {source.name}")
    onnx.save(inferred, str(inferred_path))
    settings = {
        "isa": isa,
        "per_channel": per_channel,
        "weight_type": "QInt8",
        "activation_type": "QUInt8 (dynamic)",
        "op_types": OPS_TO_QUANTIZE,
        "nodes_excluded": exclude,
        **ISA_PRESETS[isa],
    }
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs every tensor at INFO on the root logger
    try:
        quantize_dynamic(
            str(inferred_path),
            str(target),
            per_channel=per_channel,
            reduce_range=ISA_PRESETS[isa]["reduce_range"],
            weight_type=QuantType.QInt8,
            op_types_to_quantize=OPS_TO_QUANTIZE,
            nodes_to_exclude=exclude,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)
        inferred_path.unlink(missing_ok=True)
    return settings


def integer_op_counts(model_path: Path) -> dict[str, int]:
    """How many integer operators the quantised graph holds."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model_path)).graph.node:
        if node.op_type in (
            "MatMulInteger",
            "DynamicQuantizeMatMul",
            "QAttention",
            "DynamicQuantizeLinear",
            "QGemm",
            "MatMulIntegerToFloat",
            "QEmbedLayerNormalization",
        ):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
