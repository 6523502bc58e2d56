"""Rebuild a trained classifier from its run directory and merge the LoRA adapter into the base."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneserve.details import TrainDetails
from tuneserve.errors import ManifestError, ModelError
from tuneserve.manifest import Manifest
from tuneserve.models import BaseModelRef, resolve_base_model

log = logging.getLogger(__name__)

# Architectures whose ONNX export and ONNX Runtime transformer fusions are known to work.
SUPPORTED_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra")
_POOLER_ARG = ("bert", "roberta", "xlm-roberta", "camembert")


class PooledClassifier(nn.Module):
    """Inference graph: encoder -> mean or first-token pooling -> linear logits."""

    def __init__(
        self, encoder: nn.Module, pooling: str, weight: torch.Tensor, bias: torch.Tensor
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(bias)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        states = self.encoder(**batch).last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.classifier(pooled)


@dataclass
class TrainedModel:
    """The merged classifier and what the export needs to know about it."""

    model: PooledClassifier
    ref: BaseModelRef
    model_type: str
    num_heads: int
    hidden_size: int
    merged_lora: bool


def resolve_trained_base(manifest: Manifest) -> BaseModelRef:
    """Find the base model the run was trained on and check it is the same one."""
    recorded = manifest.details_as(TrainDetails).base_model
    ref = resolve_base_model(recorded.name)
    expected = recorded.fingerprint
    if expected and ref.fingerprint() != expected:
        raise ModelError(
            f"base model {ref.name!r} at {ref.path} differs from the one run {manifest.run_id} was "
            "trained on (weights fingerprint mismatch): install the same base model version"
        )
    return ref


def load_merged(run_dir: Path, manifest: Manifest) -> TrainedModel:
    """Base encoder + adapter merged (peft merge_and_unload) + the trained head, in eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    ref = resolve_trained_base(manifest)
    details = manifest.details_as(TrainDetails).model
    # a distilled student carries its own (smaller) encoder; the other runs use the base's
    source = str(run_dir / details.encoder_dir) if details.encoder_dir else ref.path
    if details.encoder_dir and not (Path(source) / "config.json").is_file():
        raise ManifestError(
            f"{run_dir} lacks its encoder ({details.encoder_dir}/): run the training stage again"
        )
    config = AutoConfig.from_pretrained(source)
    if config.model_type not in SUPPORTED_TYPES:
        raise ModelError(
            f"cannot export a {config.model_type!r} model: supported architectures are "
            f"{', '.join(SUPPORTED_TYPES)}"
        )
    extra: dict[str, Any] = {"add_pooling_layer": False} if config.model_type in _POOLER_ARG else {}
    # Eager attention exports the attention pattern that ONNX Runtime's fusions recognise.
    encoder = AutoModel.from_pretrained(source, attn_implementation="eager", **extra)
    adapter_dir = details.adapter_dir
    if adapter_dir:
        from peft import PeftModel

        path = run_dir / adapter_dir
        if not (path / "adapter_model.safetensors").is_file():
            raise ManifestError(
                f"{run_dir} lacks its LoRA adapter ({adapter_dir}/): run the training stage again"
            )
        encoder = PeftModel.from_pretrained(encoder, str(path)).merge_and_unload()
    head = load_file(str(run_dir / details.head_file))
    model = PooledClassifier(encoder, details.pooling, head["weight"], head["bias"]).eval()
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    return TrainedModel(model, ref, config.model_type, heads, hidden, bool(adapter_dir))


def save_merged(trained: TrainedModel, directory: Path) -> list[str]:
    """The merged encoder (safetensors) and head, for reference; returns the files written."""
    from safetensors.torch import save_file

    trained.model.encoder.save_pretrained(str(directory), safe_serialization=True)
    save_file(
        {k: v.contiguous() for k, v in trained.model.classifier.state_dict().items()},
        str(directory / "head.safetensors"),
    )
    return sorted(p.name for p in directory.iterdir() if p.is_file())
