"""One served variant: an export run read through its manifest, an ONNX Runtime session, warm-up;
and ``load_model``, the same checked and warmed, for a hot swap (service/swap.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.config import ServingConfig, VariantConfig
from service.errors import ModelRejectedError
from tuneserve.details import ExportDetails
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


def read_export(path: Path) -> tuple[Manifest, ExportDetails]:
    """The export manifest of ``path`` and its typed details (validated against the details
    schema), with the hash of every file the service loads checked.

    The merged PyTorch weights and the fp32 reference model are kept by the export for reference;
    a deployment may leave them out (bentofile.yaml does), so they are not required here.
    """
    manifest = read_manifest(path, stage="export", verify=False)
    details = manifest.details_as(ExportDetails)
    tokenizer_dir = str(Path(details.tokenizer).parent)
    verify_artifacts(
        path,
        manifest,
        only=lambda p: p == details.serving_model or p.startswith(tokenizer_dir + "/"),
    )
    return manifest, details


def model_version(manifest: Manifest) -> str:
    """``<run id>@<first 12 hex of the serving model's sha256>``: changes when the model does."""
    serving = manifest.details_as(ExportDetails).serving_model
    entry = next((a for a in manifest.artifacts.values() if a.path == serving), None)
    return f"{manifest.run_id}@{entry.sha256[:12]}" if entry else manifest.run_id


class VariantModel:
    """A loaded, warmed variant; ``infer`` is thread-safe (ONNX Runtime sessions are)."""

    def __init__(self, variant: VariantConfig, settings: ServingConfig) -> None:
        self.name = variant.name
        self.path = variant.path
        self.manifest, self.details = read_export(variant.path)
        details = self.details
        self.version = model_version(self.manifest)
        self.labels = details.labels()
        self.max_tokens = min(details.max_length, settings.limits.max_tokens)
        self.input_names = list(details.input_names)
        self.pad_id = details.pad_token_id
        self.tokenizer = load_tokenizer(variant.path / details.tokenizer, self.max_tokens)
        model_path = variant.path / details.serving_model
        self.session = make_session(model_path, settings.ort_threads(), settings.device)
        self.provider = self.session.get_providers()[0]
        self.io_binding = self.provider == "CUDAExecutionProvider"
        self.quantization = details.numerics()
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
        details = self.details
        return {
            "name": self.name,
            "model_version": self.version,
            "export_run": self.manifest.run_id,
            "train_run": details.train_run,
            "train_method": details.train_method,
            "base_model": details.base_model.name,
            "base_model_fingerprint": details.base_model.fingerprint,
            "adapter_sha256": details.adapter_sha256,
            "head_sha256": details.head_sha256,
            "profile": details.profile,
            "quantization": self.quantization,
            "provider": self.provider,
            "labels": self.labels,
            "max_tokens": self.max_tokens,
            "dev_accuracy_at_export": self.manifest.metrics.get("dev_accuracy_serving"),
            "ready": self.warmed,
        }


def serving_sha256(manifest: Manifest, serving_model: str) -> str:
    """The recorded sha256 of the export's serving model file."""
    return next((a.sha256 for a in manifest.artifacts.values() if a.path == serving_model), "")


def load_model(
    config: VariantConfig,
    settings: ServingConfig,
    model_version: str | None = None,
    sha256: str | None = None,
) -> VariantModel:
    """Read, verify (the manifest's hashes, and the expected version or hash), load and warm
    the export of ``config``; ModelRejectedError saying why not."""
    where = f"variant {config.name!r} from {config.path}"
    try:
        found = config.path.is_dir()
    except OSError:  # a name too long, a directory it may not read
        found = False
    if not found:
        raise ModelRejectedError(f"{where}: no such export run directory on the server")
    try:
        model = VariantModel(config, settings)
    except Exception as exc:  # a ManifestError (hashes), or ONNX Runtime refusing the file
        raise ModelRejectedError(f"{where} was not loaded: {_reason(exc)}") from exc
    got_sha = serving_sha256(model.manifest, model.details.serving_model)
    if model_version is not None and model.version != model_version:
        raise ModelRejectedError(
            f"{where}: its model_version is {model.version}, not the expected {model_version}"
        )
    if sha256 is not None and got_sha != sha256.lower():
        raise ModelRejectedError(
            f"{where}: its serving model's sha256 is {got_sha}, not the expected {sha256}"
        )
    try:
        model.warm_up(settings.warmup_runs)
    except Exception as exc:
        raise ModelRejectedError(f"{where} failed its warm-up: {_reason(exc)}") from exc
    return model


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:400] + " ..."
