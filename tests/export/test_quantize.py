"""The INT8 building blocks on small real ONNX graphs: smoothing, block-wise MatMuls, embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.optimize import (
    blockwise_int8,
    integer_op_counts,
    most_sensitive,
    quantize_blocks,
    quantize_int8,
    row_int8_embeddings,
)
from export.smoothing import choose_alpha, smooth
from tuneserve.errors import ModelError
from tuneserve.inference import make_session

K, N = 96, 48


def outlier_activations(texts: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Activations like a transformer's: most channels near 1, two channels 30x larger."""
    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(texts):
        x = rng.normal(size=(int(rng.integers(6, 20)), K)).astype(np.float32)
        x[:, [3, 40]] *= 30.0
        xs.append(x)
    return xs


def matmul_model(path: Path, weight: np.ndarray, name: str = "proj") -> Path:
    """y = x @ W with a dynamic row count, saved to ``path``."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name=name)],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def run(path: Path, xs: list[np.ndarray]) -> list[np.ndarray]:
    session = make_session(path, threads=1)
    return [session.run(["y"], {"x": x})[0] for x in xs]


def relative_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    num = sum(float(((g - w) ** 2).sum()) for g, w in zip(got, want, strict=True))
    return num / sum(float((w**2).sum()) for w in want)


def runner(xs: list[np.ndarray]) -> Any:
    return lambda session, outputs: [session.run(outputs, {"x": x}) for x in xs]


def test_choose_alpha_moves_outliers_into_the_weight() -> None:
    weight = np.random.default_rng(1).normal(size=(K, N)).astype(np.float32) * 0.05
    choice = choose_alpha(outlier_activations(), weight)
    assert choice["alpha"] > 0
    assert choice["error_after"] < choice["error_before"] / 2


def test_choose_alpha_leaves_plain_activations_alone() -> None:
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(K, N)).astype(np.float32)
    plain = [rng.normal(size=(12, K)).astype(np.float32) for _ in range(8)]
    assert choose_alpha(plain, weight)["alpha"] == 0.0  # no gain worth a Mul


def test_smoothing_is_exact_in_fp32_and_helps_int8(tmp_path: Path) -> None:
    weight = np.random.default_rng(3).normal(size=(K, N)).astype(np.float32) * 0.05
    source = matmul_model(tmp_path / "plain.onnx", weight)
    calibration, held_out = outlier_activations(16, seed=4), outlier_activations(16, seed=5)
    report = smooth(source, tmp_path / "smoothed.onnx", ["proj"], runner(calibration))
    assert report["proj"]["alpha"] > 0
    ops = [n.op_type for n in onnx.load(str(tmp_path / "smoothed.onnx")).graph.node]
    assert ops == ["Mul", "MatMul"]
    exact = run(source, held_out)
    assert relative_error(run(tmp_path / "smoothed.onnx", held_out), exact) < 1e-10

    errors = {}
    for name in ("plain", "smoothed"):
        target = tmp_path / f"{name}.int8.onnx"
        quantize_int8(tmp_path / f"{name}.onnx", target, "avx512_vnni", True, [])
        assert integer_op_counts(target).get("MatMulInteger") == 1
        errors[name] = relative_error(run(target, held_out), exact)
    assert errors["smoothed"] < errors["plain"] / 2, errors


def test_smoothing_skips_a_weight_shared_by_two_nodes(tmp_path: Path) -> None:
    weight = np.random.default_rng(6).normal(size=(K, K)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
            helper.make_node("MatMul", ["h", "w"], ["y"], name="second"),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", K])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(tmp_path / "s.onnx"),
    )
    report = smooth(tmp_path / "s.onnx", tmp_path / "out.onnx", ["first", "second"], runner([]))
    assert report == {}


def test_blocks_round_trip_within_half_a_step() -> None:
    weight = np.random.default_rng(7).normal(size=(200, N)).astype(np.float32)  # K not a multiple
    packed, scales = quantize_blocks(weight, 64)
    assert packed.shape == (N, 4, 64) and scales.shape == (N, 4)
    restored = ((packed.astype(np.float32) - 128) * scales[..., None]).reshape(N, -1).T[:200]
    step = np.repeat(scales.T, 64, axis=0)[:200]
    assert np.all(np.abs(restored - weight) <= step / 2 + 1e-7)


def test_blockwise_matmul_runs_and_matches_fp32(tmp_path: Path) -> None:
    weight = np.random.default_rng(8).normal(size=(200, N)).astype(np.float32) * 0.05
    source = matmul_model(tmp_path / "mm.onnx", weight)
    model = onnx.load(str(source))
    blockwise_int8(model, ["proj"], 64)
    onnx.save(model, str(tmp_path / "q.onnx"))
    assert integer_op_counts(tmp_path / "q.onnx") == {"MatMulNBits": 1}
    xs = [np.random.default_rng(9).normal(size=(10, 200)).astype(np.float32)]
    xs[0][:, 5] *= 30  # per-row, per-block activation scales tolerate an outlier channel
    assert relative_error(run(tmp_path / "q.onnx", xs), run(source, xs)) < 1e-3
    with pytest.raises(ModelError, match="constant weight"):
        blockwise_int8(model, ["proj/q8"], 64)


def test_row_int8_embeddings_keep_each_rows_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    table = rng.normal(size=(400, 256)).astype(np.float32)
    table[7] *= 50  # one row with a large range must not coarsen the others
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="lookup")],
        "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert row_int8_embeddings(model) == {"table": [400, 256]}
    onnx.save(model, str(tmp_path / "e.onnx"))
    stored = {i.name: i.data_type for i in onnx.load(str(tmp_path / "e.onnx")).graph.initializer}
    assert stored == {"table/q8": TensorProto.INT8, "table/scale": TensorProto.FLOAT}
    ids = np.arange(400, dtype=np.int64)
    got = make_session(tmp_path / "e.onnx", threads=1).run(["y"], {"ids": ids})[0]
    step = np.abs(table).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(got - table) <= step / 2 + 1e-6)
    assert np.abs(got - table)[:7].max() < 0.05  # a per-table scale would give ~1.0 here


def test_blocks_match_onnxruntimes_own_packing() -> None:
    """Our numpy packing equals ONNX Runtime's C++ quantiser (its layout and zero point)."""
    pybind = pytest.importorskip("onnxruntime.capi._pybind_state")
    if not hasattr(pybind, "quantize_matmul_8bits"):
        pytest.skip("this onnxruntime has no 8-bit block quantiser to compare with")
    weight = np.random.default_rng(11).normal(size=(200, N)).astype(np.float32)
    packed, scales = quantize_blocks(weight, 64)
    theirs = np.zeros(packed.shape, np.uint8)  # C order, as the C++ side writes
    their_scales = np.zeros(scales.shape, np.float32)
    padded = np.pad(weight, ((0, 56), (0, 0)))  # ONNX Runtime's quantiser pads K first, too
    zero_points = np.zeros(scales.shape, np.uint8)
    pybind.quantize_matmul_8bits(theirs, padded, their_scales, zero_points, 64, N, 256, True)
    restored = (packed.astype(np.float32) - 128) * scales[..., None]
    their_restored = (theirs.astype(np.float32) - 128) * their_scales[..., None]
    assert np.allclose(restored, their_restored, atol=np.abs(scales).max())


def test_most_sensitive_covers_the_share_with_the_fewest_nodes() -> None:
    errors = {"a": 0.5, "b": 3.0, "c": 1.0, "d": 0.1}  # total 4.6
    assert most_sensitive(errors, 0.6) == ["b"]  # 3.0 >= 2.76
    assert most_sensitive(errors, 0.8) == ["b", "c"]  # 4.0 >= 3.68
    assert most_sensitive(errors, 1.0) == ["b", "c", "a", "d"]
    assert most_sensitive(errors, 0.0) == ["b"]  # at least one
