"""Running exported models: tokenisation as the service does it, ONNX Runtime sessions, batches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneserve.errors import ModelError


def load_tokenizer(tokenizer_json: Path, max_length: int) -> Any:
    """A `tokenizers` fast tokenizer truncating to ``max_length`` (what the service uses)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


def encode_batch(
    tokenizer: Any, texts: Sequence[str], input_names: Sequence[str], pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Tokenise and pad to the longest text of the batch (right padding)."""
    encodings = tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(texts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    types = np.zeros((len(texts), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n], mask[row, :n], types[row, :n] = enc.ids, enc.attention_mask, enc.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: arrays[name] for name in input_names}


def make_session(model_path: Path, threads: int = 0, provider: str = "cpu") -> Any:
    """An ONNX Runtime session; CUDA when asked and available, else CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if provider == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelError(
            f"ONNX Runtime cannot load {model_path}: {str(exc).splitlines()[0][:300]}"
        ) from exc


def session_logits(
    session: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, pad_id: int = 0
) -> np.ndarray:
    """Logits for every text, ``batch_size`` texts per call, in input order."""
    names = [i.name for i in session.get_inputs()]
    out = []
    for start in range(0, len(texts), batch_size):
        feed = encode_batch(tokenizer, texts[start : start + batch_size], names, pad_id)
        out.append(session.run(["logits"], feed)[0])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
