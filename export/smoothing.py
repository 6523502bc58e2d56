"""Activation smoothing before dynamic INT8 (SmoothQuant, Xiao et al. 2023), tuned per node.

Dynamic INT8 quantises each MatMul's input with one scale per tensor, so a few outlier channels
(MiniLM's feed-forward inputs reach 14x their median channel) waste most of the 8 bits. For a
MatMul ``y = x @ W`` and per-input-channel factors ``s``, ``y = (x / s) @ (s * W)`` holds exactly
in fp32; it moves range from the activation into the weight, whose per-channel scales absorb it.

The strength ``alpha`` (``s = max|x|^alpha / max|W|^(1 - alpha)``) is chosen per node from a grid
by simulating the INT8 arithmetic on activations captured from real calibration texts (per-tensor
asymmetric uint8 activations, per-channel symmetric int8 weights, as ONNX Runtime computes them).
A node is rewritten only when that cuts its simulated relative error by at least ``MIN_GAIN``, since
each rewrite adds one element-wise Mul at run time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ALPHAS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
MIN_GAIN = 1.5
GRID_TEXTS = 64
SMOOTHABLE = ("MatMul", "Attention")  # both take (activation, constant weight [K, N], ...)
_SCALE_RANGE = (1e-2, 1e2)


def quantization_error(xs: Sequence[np.ndarray], weight: np.ndarray) -> float:
    """Relative squared error of ``x @ W`` under dynamic INT8, summed over the calibration texts.

    Each text is quantised on its own, as the batch-1 service does: activations asymmetric uint8
    with one scale per call, weights symmetric int8 with one scale per output column.
    """
    w_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
    w_deq = np.round(weight / w_scale) * w_scale
    err = total = 0.0
    for x in xs:
        lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
        scale = (hi - lo) / 255.0 or 1.0
        zero = np.round(-lo / scale)
        x_deq = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
        exact = x @ weight
        err += float(((x_deq @ w_deq - exact) ** 2).sum())
        total += float((exact**2).sum())
    return err / max(total, 1e-30)


def smoothing_factors(x_max: np.ndarray, weight: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel factors s (divide the activation, multiply W's rows)."""
    w_max = np.maximum(np.abs(weight).max(axis=1), 1e-5)
    s = np.maximum(x_max, 1e-5) ** alpha / w_max ** (1 - alpha)
    return np.clip(s, *_SCALE_RANGE).astype(np.float32)


def choose_alpha(xs: Sequence[np.ndarray], weight: np.ndarray) -> dict[str, Any]:
    """The grid's best strength for one node, with the simulated errors before and after."""
    x_max = np.concatenate([np.abs(x) for x in xs]).max(axis=0)
    xs = xs[:: max(1, len(xs) // GRID_TEXTS)]  # the error is estimated on a subsample
    before = quantization_error(xs, weight)
    best_alpha, best_err = 0.0, before
    for alpha in ALPHAS:
        s = smoothing_factors(x_max, weight, alpha)
        err = quantization_error([x / s for x in xs], weight * s[:, None])
        if err < best_err:
            best_alpha, best_err = alpha, err
    if best_err * MIN_GAIN > before:
        best_alpha, best_err = 0.0, before
    return {"alpha": best_alpha, "error_before": before, "error_after": best_err}


RunTexts = Callable[[Any, list[str]], list[list[np.ndarray]]]


def capture_inputs(
    model_path: Path, nodes: Sequence[str], run_texts: RunTexts
) -> dict[str, list[np.ndarray]]:
    """The input activation of each named node, one [tokens, channels] array per text.

    ``run_texts(session, outputs)`` runs the calibration texts one by one through a session of
    the tapped model and returns, per text, the named outputs in order.
    """
    import onnx

    from tuneserve.inference import make_session

    model = onnx.load(str(model_path))
    by_name = {n.name: n for n in model.graph.node}
    taps = list(dict.fromkeys(by_name[n].input[0] for n in nodes))
    known = {o.name for o in model.graph.output}
    for tap in taps:
        if tap not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=tap))
    tapped = model_path.with_name(model_path.stem + ".taps.onnx")
    onnx.save(model, str(tapped))
    try:
        per_text = run_texts(make_session(tapped), taps)
    finally:
        tapped.unlink(missing_ok=True)
    acts = {
        tap: [out[i].reshape(-1, out[i].shape[-1]) for out in per_text]
        for i, tap in enumerate(taps)
    }
    return {n: acts[by_name[n].input[0]] for n in nodes}


def smooth(
    source: Path,
    target: Path,
    nodes: Sequence[str],
    run_texts: RunTexts,
) -> dict[str, dict[str, Any]]:
    """Write ``source`` with the chosen nodes smoothed to ``target``; the per-node choices.

    Nodes whose weight is not a 2-D initializer are left alone. The result is the same function
    in fp32 (up to rounding); only its INT8 quantisation improves.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses = Counter(name for n in graph.node for name in n.input)
    wanted = set(nodes)
    weights = {
        n.name: numpy_helper.to_array(inits[n.input[1]])
        for n in graph.node
        if n.name in wanted
        and n.op_type in SMOOTHABLE
        and n.input[1] in inits
        and uses[n.input[1]] == 1  # a weight shared with another node cannot absorb s
    }
    weights = {k: w for k, w in weights.items() if w.ndim == 2}
    acts = capture_inputs(source, list(weights), run_texts) if weights else {}
    report: dict[str, dict[str, Any]] = {}
    rewritten: list[Any] = []
    for node in graph.node:
        if node.name in weights:
            weight, xs = weights[node.name], acts[node.name]
            choice = choose_alpha(xs, weight)
            report[node.name] = choice
            if choice["alpha"] > 0:
                x_max = np.concatenate([np.abs(x) for x in xs]).max(axis=0)
                s = smoothing_factors(x_max, weight, choice["alpha"])
                inits[node.input[1]].CopyFrom(
                    numpy_helper.from_array((weight * s[:, None]).astype(np.float32), node.input[1])
                )
                base = f"{node.name}/smooth"
                graph.initializer.append(numpy_helper.from_array(1.0 / s, base + "/inv_scale"))
                rewritten.append(
                    helper.make_node(
                        "Mul", [node.input[0], base + "/inv_scale"], [base + "/out"], name=base
                    )
                )
                node.input[0] = base + "/out"
        rewritten.append(node)
    del graph.node[:]
    graph.node.extend(rewritten)
    onnx.save(model, str(target))
    chosen = {k: round(v["alpha"], 2) for k, v in report.items() if v["alpha"] > 0}
    log.info("smoothed %d of %d nodes: %s", len(chosen), len(report), chosen)
    return report
