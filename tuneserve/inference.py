"""Running exported models: tokenisation, padding, ONNX Runtime sessions (export and service).

The export stage's parity gates and the service run exactly this code, so the accuracy measured at
export is the accuracy served. `tokenizers` and `onnxruntime` are imported lazily: the core stays
importable without them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneserve.errors import ModelError

logger = logging.getLogger(__name__)


def load_tokenizer(tokenizer_json: Path, max_length: int) -> Any:
    """A `tokenizers` fast tokenizer truncating to ``max_length`` (what the service uses)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_json))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        raise ModelError(f"cannot read tokenizer {tokenizer_json}: {exc}") from exc
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


def pad_encodings(
    encodings: Sequence[Any], input_names: Sequence[str], pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Right-pad tokenised texts to the longest of the batch; only the model's inputs."""
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n], mask[row, :n], types[row, :n] = enc.ids, enc.attention_mask, enc.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: arrays[name] for name in input_names}


def encode_batch(
    tokenizer: Any, texts: Sequence[str], input_names: Sequence[str], pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Tokenise and pad to the longest text of the batch (right padding)."""
    return pad_encodings(tokenizer.encode_batch(list(texts)), input_names, pad_id)


def was_truncated(encoding: Any) -> bool:
    """True when the tokenizer cut the text at the maximum length."""
    return bool(encoding.overflowing)


def make_session(model_path: Path, threads: int = 0, provider: str = "cpu") -> Any:
    """An ONNX Runtime session; CUDA when asked and available, else CPU with a warning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            logger.warning(
                "device cuda asked for but onnxruntime offers %s: running %s on CPU "
                "(install onnxruntime-gpu and a CUDA runtime to use the GPU)",
                ort.get_available_providers(),
                model_path.name,
            )
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelError(
            f"ONNX Runtime cannot load {model_path}: {str(exc).splitlines()[0][:300]}"
        ) from exc


def run_logits(session: Any, feed: dict[str, np.ndarray], io_binding: bool = False) -> np.ndarray:
    """The ``logits`` output for one padded batch, optionally through IO binding (CUDA)."""
    if not io_binding:
        return np.asarray(session.run(["logits"], feed)[0], dtype=np.float32)
    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_cpu_input(name, array)
    binding.bind_output("logits", "cpu")
    session.run_with_iobinding(binding)
    return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


def session_logits(
    session: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, pad_id: int = 0
) -> np.ndarray:
    """Logits for every text, ``batch_size`` texts per call, in input order."""
    names = [i.name for i in session.get_inputs()]
    out = []
    for start in range(0, len(texts), batch_size):
        feed = encode_batch(tokenizer, texts[start : start + batch_size], names, pad_id)
        out.append(run_logits(session, feed))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float32)
