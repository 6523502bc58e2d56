"""Graph optimisation (ONNX Runtime transformer fusions), fp16 conversion, dynamic INT8."""

from __future__ import annotations

import contextlib
import logging
import platform
import re
from collections.abc import Callable, Iterator
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
# With per-row embeddings (the default) the tables are stored int8 by `row_int8_embeddings` instead.
OPS_TO_QUANTIZE = ["MatMul", "Attention", "EmbedLayerNormalization", "Gather"]
EMBEDDING_OPS = ("EmbedLayerNormalization", "Gather")
# Tables smaller than this stay fp32 (position and token-type embeddings are tiny).
_MIN_TABLE = 1 << 16
# Feed-forward output projections, per naming style, as Optimum names the exported nodes.
_FFN_OUTPUT = re.compile(r"(layer\.\d+/output/dense/MatMul|ffn/lin2/MatMul)")


def _infer_shapes(source: Path, target: Path) -> None:
    """Symbolic shape inference of ``source`` into ``target`` (the quantiser needs it on fused
    graphs)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True)
    if inferred is None:
        raise ModelError(f"symbolic shape inference failed on {source.name}")
    onnx.save(inferred, str(target))


@contextlib.contextmanager
def _quiet_quantiser() -> Iterator[None]:
    """ONNX Runtime's quantiser logs every tensor at INFO on the root logger: silence it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


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


def blockwise_nodes(model_path: Path, which: str) -> list[str]:
    """The MatMuls to quantise block-wise: ffn_output, all, or none."""
    import onnx

    if which == "none":
        return []
    if which == "ffn_output":
        return ffn_output_nodes(model_path)
    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def node_sensitivity(
    source: Path,
    nodes: list[str],
    logit_error: Callable[[Path], float],
    per_channel: bool = True,
) -> dict[str, float]:
    """Each node's own cost under per-tensor dynamic INT8: quantise it alone, measure the logits.

    ``logit_error(model_path)`` returns the mean squared logit difference from fp32 on the
    calibration texts. Used to give the block-wise treatment only to the nodes that need it.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    inferred_path = source.with_name(source.stem + ".shapes.onnx")
    single = source.with_name(source.stem + ".single.onnx")
    errors = {}
    try:
        _infer_shapes(source, inferred_path)
        for node in nodes:
            with _quiet_quantiser():
                quantize_dynamic(
                    str(inferred_path),
                    str(single),
                    per_channel=per_channel,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul"],
                    nodes_to_quantize=[node],
                    extra_options={"MatMulConstBOnly": True},
                )
            errors[node] = float(logit_error(single))
    finally:
        inferred_path.unlink(missing_ok=True)
        single.unlink(missing_ok=True)
    return errors


def most_sensitive(errors: dict[str, float], share: float) -> list[str]:
    """The fewest nodes, largest error first, whose errors add up to ``share`` of the total."""
    ranked = sorted(errors, key=lambda n: errors[n], reverse=True)
    total = sum(errors.values())
    chosen: list[str] = []
    covered = 0.0
    for node in ranked:
        if chosen and covered >= share * total:
            break
        chosen.append(node)
        covered += errors[node]
    return chosen


def dynamic_nodes(model_path: Path, exclude: list[str]) -> list[str]:
    """The MatMul and Attention nodes that dynamic INT8 will quantise (per-tensor activations)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    skip = set(exclude)
    return [
        n.name for n in graph.node if n.op_type in ("MatMul", "Attention") and n.name not in skip
    ]


def quantize_int8(
    source: Path,
    target: Path,
    isa: str,
    per_channel: bool,
    exclude: list[str],
    *,
    blockwise: list[str] | None = None,
    block_size: int = 128,
    embeddings: str = "per_row",
) -> dict[str, Any]:
    """Dynamic INT8 of ``source``; ``blockwise`` nodes get block-wise 8-bit instead.

    Symbolic shape inference first (the quantiser needs it on fused graphs). Nodes in ``exclude``
    stay fp32. ``blockwise`` MatMuls become MatMulNBits with 8-bit weights in blocks of
    ``block_size`` along K and int8 compute (accuracy_level 4), which quantises the activation per
    row and block instead of per tensor. ``embeddings`` per_row stores the embedding tables int8
    with one scale per row (ONNX Runtime's quantiser has one scale per table).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    blockwise = blockwise or []
    op_types = [
        op for op in OPS_TO_QUANTIZE if embeddings == "per_tensor" or op not in EMBEDDING_OPS
    ]
    settings = {
        "isa": isa,
        "per_channel": per_channel,
        "weight_type": "QInt8",
        "activation_type": "QUInt8 (dynamic)",
        "op_types": op_types,
        "nodes_excluded": exclude,
        "blockwise_nodes": blockwise,
        "block_size": block_size,
        "embeddings": embeddings,
        **ISA_PRESETS[isa],
    }
    inferred_path = target.with_name(target.stem + ".shapes.onnx")
    try:
        _infer_shapes(source, inferred_path)
        with _quiet_quantiser():
            quantize_dynamic(
                str(inferred_path),
                str(target),
                per_channel=per_channel,
                reduce_range=ISA_PRESETS[isa]["reduce_range"],
                weight_type=QuantType.QInt8,
                op_types_to_quantize=op_types,
                nodes_to_exclude=exclude + blockwise,
                extra_options={"MatMulConstBOnly": True},
            )
    finally:
        inferred_path.unlink(missing_ok=True)
    if blockwise or embeddings == "per_row":
        model = onnx.load(str(target))
        if blockwise:
            blockwise_int8(model, blockwise, block_size)
        if embeddings == "per_row":
            settings["embedding_tables"] = row_int8_embeddings(model)
        onnx.save(model, str(target))
    return settings


def quantize_blocks(weight: Any, block_size: int) -> tuple[Any, Any]:
    """Symmetric 8-bit block-wise weights in MatMulNBits layout: (uint8 [N, blocks, block], scales).

    Each block of ``block_size`` rows of one column has its own scale; values are stored offset
    by 128, the default zero point of 8-bit MatMulNBits when no zero points are given.
    """
    import numpy as np

    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float32)
    padded[:k] = weight
    cols = padded.T.reshape(n, blocks, block_size)
    scales = np.maximum(np.abs(cols).max(axis=2), 1e-12) / 127.0
    q = np.clip(np.round(cols / scales[..., None]), -127, 127) + 128
    return np.ascontiguousarray(q, dtype=np.uint8), np.ascontiguousarray(scales, dtype=np.float32)


def blockwise_int8(model: Any, nodes: list[str], block_size: int) -> None:
    """Replace the named MatMuls (constant 2-D weight) with 8-bit MatMulNBits, in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(nodes)
    for index, node in enumerate(graph.node):
        if node.name not in wanted:
            continue
        if node.op_type != "MatMul" or node.input[1] not in inits:
            raise ModelError(f"block-wise INT8 needs a MatMul with a constant weight: {node.name}")
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2:
            raise ModelError(f"block-wise INT8 needs a 2-D weight: {node.name} has {weight.shape}")
        packed, scales = quantize_blocks(weight, block_size)
        base = f"{node.input[1]}/q8"
        graph.initializer.extend(
            [
                numpy_helper.from_array(packed, base),
                numpy_helper.from_array(scales, base + "/scale"),
            ]
        )
        graph.initializer.remove(inits.pop(node.input[1]))
        graph.node.remove(node)
        graph.node.insert(
            index,
            helper.make_node(
                "MatMulNBits",
                [node.input[0], base, base + "/scale"],
                list(node.output),
                name=node.name + "/q8",
                domain="com.microsoft",
                K=weight.shape[0],
                N=weight.shape[1],
                bits=8,
                block_size=block_size,
                accuracy_level=4,  # int8 compute: the activation is quantised per row and block
            ),
        )
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def row_int8_embeddings(model: Any) -> dict[str, list[int]]:
    """Store large embedding tables int8 with one scale per row, dequantised at session start.

    The table becomes Cast(int8) * scale, a constant subgraph ONNX Runtime folds when it loads
    the model, so the file shrinks 4x at no run-time cost and each row keeps its own range.
    Returns the rewritten tables and their shapes.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    tables: list[str] = []
    for node in graph.node:
        candidates = node.input[2:5] if node.op_type == "EmbedLayerNormalization" else []
        if node.op_type == "Gather":
            candidates = node.input[:1]
        for name in candidates:
            entry = inits.get(name)
            if entry is not None and entry.data_type == TensorProto.FLOAT and name not in tables:
                dims = list(entry.dims)
                if len(dims) == 2 and dims[0] * dims[1] >= _MIN_TABLE:
                    tables.append(name)
    shapes: dict[str, list[int]] = {}
    prologue = []
    for name in tables:
        table = numpy_helper.to_array(inits[name])
        scale = (np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-12) / 127.0).astype(
            np.float32
        )
        q = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, name + "/q8"),
                numpy_helper.from_array(scale, name + "/scale"),
            ]
        )
        prologue += [
            helper.make_node(
                "Cast", [name + "/q8"], [name + "/f32"], to=TensorProto.FLOAT, name=name + "/cast"
            ),
            helper.make_node(
                "Mul", [name + "/f32", name + "/scale"], [name], name=name + "/dequantize"
            ),
        ]
        shapes[name] = list(table.shape)
    for node in reversed(prologue):
        graph.node.insert(0, node)
    return shapes


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
            "MatMulNBits",
        ):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
