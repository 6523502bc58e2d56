"""ONNX export: the encoder through Optimum, then pooling and the classifier as ONNX nodes."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from tuneserve.errors import ModelError

log = logging.getLogger(__name__)

LOGITS = "logits"


def export_encoder(encoder: torch.nn.Module, directory: Path, opset: int) -> Path:
    """Export the encoder with Optimum (task feature-extraction, dynamic batch and sequence)."""
    from optimum.exporters.onnx import onnx_export_from_model

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        try:
            onnx_export_from_model(
                encoder, tmp, opset=opset, task="feature-extraction", do_validation=False
            )
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(
                f"Optimum could not export the encoder to ONNX: {str(exc).splitlines()[0]}"
            ) from exc
        target = directory / "encoder.onnx"
        shutil.move(str(Path(tmp) / "model.onnx"), target)
        if (Path(tmp) / "model.onnx_data").exists():
            raise ModelError("the exported encoder exceeds 2 GB (external data): not supported")
    return target


def append_head(
    encoder_onnx: Path, target: Path, pooling: str, weight: np.ndarray, bias: np.ndarray
) -> list[str]:
    """Add pooling and the linear classifier after ``last_hidden_state``; output ``logits``.

    Returns the model's input names.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(encoder_onnx))
    graph = model.graph
    states = "last_hidden_state"
    if states not in [o.name for o in graph.output]:
        raise ModelError(f"exported encoder has no {states!r} output")
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    if pooling == "cls":
        nodes.append(
            helper.make_node(
                "Gather",
                [states, const("head_zero", np.array(0))],
                ["pooled"],
                axis=1,
                name="head/cls",
            )
        )
    else:
        axis2 = const("head_axis2", np.array([2], dtype=np.int64))
        axis1 = const("head_axis1", np.array([1], dtype=np.int64))
        nodes += [
            helper.make_node(
                "Cast",
                ["attention_mask"],
                ["head_mask_f"],
                to=TensorProto.FLOAT,
                name="head/mask_cast",
            ),
            helper.make_node(
                "Unsqueeze", ["head_mask_f", axis2], ["head_mask_e"], name="head/mask_unsqueeze"
            ),
            helper.make_node("Mul", [states, "head_mask_e"], ["head_masked"], name="head/mul"),
            helper.make_node(
                "ReduceSum", ["head_masked", axis1], ["head_sum"], keepdims=0, name="head/sum"
            ),
            helper.make_node(
                "ReduceSum", ["head_mask_e", axis1], ["head_count"], keepdims=0, name="head/count"
            ),
            helper.make_node(
                "Max",
                ["head_count", const("head_one", np.array([1.0], np.float32))],
                ["head_count_c"],
                name="head/clamp",
            ),
            helper.make_node("Div", ["head_sum", "head_count_c"], ["pooled"], name="head/mean"),
        ]
    nodes.append(
        helper.make_node(
            "Gemm",
            [
                "pooled",
                const("classifier.weight", weight.astype(np.float32)),
                const("classifier.bias", bias.astype(np.float32)),
            ],
            [LOGITS],
            transB=1,
            name="classifier/Gemm",
        )
    )
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch_size", weight.shape[0]])
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return [i.name for i in graph.input]
