"""One served variant: an export run read through its manifest, an ONNX Runtime session, warm-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.config import ServingConfig, VariantConfig
from tuneserve.errors import ManifestError
from tuneserve.inference import (
    load_tokenizer,
    make_session,
    pad_encodings,
    run_logits,
    softmax,
    was_truncated,
)
from tuneserve.manifest import Manifest, read_manifest, verify_artifacts

logger = logging.getLogger(__name__)

WARMUP_TEXTS = ("a warm-up sentence", "another, somewhat longer warm-up sentence for the model")


@dataclass(frozen=True)
class Prediction:
    """The answer for one text."""

    label: str
    score: float
    scores: dict[str, float]
    truncated: bool


def read_export(path: Path) -> Manifest:
    """The export manifest of ``path``, with the hash of every file the service loads checked.

    The merged PyTorch weights and the fp32 reference model are kept by the export for reference;
    a deployment may leave them out (bentofile.yaml does), so they are not required here.
    """
    manifest = read_manifest(path, stage="export", verify=False)
    for key in ("serving_model", "tokenizer", "id2label", "input_names", "max_length"):
        if key not in manifest.details:
            raise ManifestError(
                f"{path}/manifest.json lacks details.{key}: export it again with this version"
            )
    needed = {manifest.details["serving_model"]}
    tokenizer_dir = str(Path(manifest.details["tokenizer"]).parent)
    verify_artifacts(
        path, manifest, only=lambda p: p in needed or p.startswith(tokenizer_dir + "/")
    )
    return manifest


def model_version(manifest: Manifest) -> str:
    """``<run id>@<first 12 hex of the serving model's sha256>``: changes when the model does."""
    entry = next(
        (a for a in manifest.artifacts.values() if a.path == manifest.details["serving_model"]),
        None,
    )
    return f"{manifest.run_id}@{entry.sha256[:12]}" if entry else manifest.run_id


class VariantModel:
    """A loaded, warmed variant; ``infer`` is thread-safe (ONNX Runtime sessions are)."""

    def __init__(self, variant: VariantConfig, settings: ServingConfig) -> None:
        self.name = variant.name
        self.path = variant.path
        self.manifest = read_export(variant.path)
        details = self.manifest.details
        self.version = model_version(self.manifest)
        id2label = details["id2label"]
        self.labels = [str(id2label[str(i)]) for i in range(len(id2label))]
        self.max_tokens = min(int(details["max_length"]), settings.limits.max_tokens)
        self.input_names = list(details["input_names"])
        self.pad_id = int(details.get("pad_token_id", 0))
        self.tokenizer = load_tokenizer(variant.path / details["tokenizer"], self.max_tokens)
        model_path = variant.path / details["serving_model"]
        self.session = make_session(model_path, settings.ort_threads(), settings.device)
        self.provider = self.session.get_providers()[0]
        self.io_binding = self.provider == "CUDAExecutionProvider"
        self.quantization = _quantization_name(details)
        self.warmed = False

    def encode(self, texts: list[str]) -> list[Any]:
        """Tokenise (truncating at ``max_tokens``); padding happens per batch."""
        return list(self.tokenizer.encode_batch(texts))

    def infer(self, encodings: list[Any]) -> np.ndarray:
        """Class probabilities for one batch, padded to its longest text."""
        feed = pad_encodings(encodings, self.input_names, self.pad_id)
        return softmax(run_logits(self.session, feed, self.io_binding))

    def infer_sorted(self, encodings: list[Any], batch_size: int) -> np.ndarray:
        """Probabilities for many texts: sorted by length, run in chunks, returned in order."""
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        probs = np.zeros((len(encodings), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            probs[chunk] = self.infer([encodings[i] for i in chunk])
        return probs

    def answer(self, probs: np.ndarray, encoding: Any) -> Prediction:
        """The client-facing prediction for one row of probabilities."""
        best = int(np.argmax(probs))
        return Prediction(
            label=self.labels[best],
            score=float(probs[best]),
            scores={label: float(p) for label, p in zip(self.labels, probs, strict=True)},
            truncated=was_truncated(encoding),
        )

    def predict(self, texts: list[str], batch_size: int = 32) -> list[Prediction]:
        """Predictions for ``texts`` in one call (no batching across requests)."""
        encodings = self.encode(texts)
        probs = self.infer_sorted(encodings, batch_size)
        return [self.answer(p, e) for p, e in zip(probs, encodings, strict=True)]

    def warm_up(self, runs: int) -> None:
        """Run the model a few times so the first client does not pay for lazy initialisation."""
        for _ in range(runs):
            self.infer(self.encode(list(WARMUP_TEXTS)))
            self.infer(self.encode(list(WARMUP_TEXTS[:1])))
        self.warmed = True

    def summary(self) -> dict[str, Any]:
        """What GET /models shows for this variant."""
        details = self.manifest.details
        metrics = self.manifest.metrics
        base = details.get("base_model", {})
        return {
            "name": self.name,
            "model_version": self.version,
            "export_run": self.manifest.run_id,
            "train_run": details.get("train_run"),
            "train_method": details.get("train_method"),
            "base_model": base.get("name"),
            "base_model_fingerprint": base.get("fingerprint"),
            "adapter_sha256": details.get("adapter_sha256"),
            "head_sha256": details.get("head_sha256"),
            "profile": details.get("profile"),
            "quantization": self.quantization,
            "provider": self.provider,
            "labels": self.labels,
            "max_tokens": self.max_tokens,
            "dev_accuracy_at_export": metrics.get("dev_accuracy_serving"),
            "ready": self.warmed,
        }


def _quantization_name(details: dict[str, Any]) -> str:
    """What the model_info metric and GET /models call the serving model's numerics, naming
    each fidelity step the export applied, e.g. ``int8-dynamic-avx512_vnni+smoothed16+blockwise3
    +row-emb`` (nodes smoothed, MatMuls block-wise, per-row int8 embeddings)."""
    quant = details.get("quantization")
    if not isinstance(quant, dict):
        return "fp16" if details.get("profile") == "gpu-fp16" else "fp32"
    smoothed = ((quant.get("smoothing") or {}).get("nodes")) or {}
    steps = [
        f"smoothed{n}" if (n := sum(1 for c in smoothed.values() if c.get("alpha", 0) > 0)) else "",
        f"blockwise{len(quant['blockwise_nodes'])}" if quant.get("blockwise_nodes") else "",
        "row-emb" if quant.get("embeddings") == "per_row" else "",
        "fp32-ffn" if quant.get("fallback_used") else "",
    ]
    return "+".join([f"int8-dynamic-{quant.get('isa', '?')}", *filter(None, steps)])
