"""Parity and accuracy gates: fp32 ONNX vs PyTorch, quantised vs fp32, every mismatch named."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tuneserve.inference import encode_batch, session_logits


def pytorch_logits(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    input_names: Sequence[str],
    batch_size: int,
    pad_id: int,
) -> np.ndarray:
    """Reference logits from the merged PyTorch model, batched like the ONNX run."""
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            feed = encode_batch(tokenizer, texts[start : start + batch_size], input_names, pad_id)
            out.append(model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy())
    return np.concatenate(out)


def fp32_parity(
    model: torch.nn.Module,
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_abs_diff: float,
    batch_size: int,
    pad_id: int,
) -> dict[str, Any]:
    """Largest absolute logit difference between PyTorch and the fp32 ONNX model."""
    names = [i.name for i in session.get_inputs()]
    reference = pytorch_logits(model, tokenizer, texts, names, batch_size, pad_id)
    exported = session_logits(session, tokenizer, texts, batch_size, pad_id)
    diff = float(np.abs(reference - exported).max())
    return {
        "examples": len(texts),
        "batch_size": batch_size,
        "max_abs_diff": diff,
        "threshold": max_abs_diff,
        "passed": diff <= max_abs_diff,
        "prediction_agreement": float((reference.argmax(1) == exported.argmax(1)).mean()),
    }


def quantized_gate(
    fp32_logits: np.ndarray,
    q_logits: np.ndarray,
    labels: Sequence[int],
    min_agreement: float,
    max_drop: float,
) -> dict[str, Any]:
    """Agreement with fp32 and the accuracy drop on labelled examples."""
    gold = np.asarray(labels)
    fp32_pred, q_pred = fp32_logits.argmax(1), q_logits.argmax(1)
    agreement = float((fp32_pred == q_pred).mean())
    fp32_acc, q_acc = float((fp32_pred == gold).mean()), float((q_pred == gold).mean())
    drop = fp32_acc - q_acc
    failures = []
    if agreement < min_agreement:
        failures.append(f"agreement {agreement:.4f} < {min_agreement}")
    if drop > max_drop:
        failures.append(f"accuracy drop {drop * 100:.2f} points > {max_drop * 100:.2f}")
    return {
        "examples": len(gold),
        "agreement": agreement,
        "fp32_accuracy": fp32_acc,
        "quantized_accuracy": q_acc,
        "accuracy_drop": drop,
        # a finer fidelity figure than agreement: how far the logits moved, in logit units
        "logit_rms_diff": float(np.sqrt(np.mean((q_logits - fp32_logits) ** 2))),
        "min_agreement": min_agreement,
        "max_accuracy_drop": max_drop,
        "passed": not failures,
        "failures": failures,
    }
