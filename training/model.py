"""The classifier: a pretrained encoder, pooling and a linear head; LoRA wraps the encoder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.config import LoraConfig, ModelConfig
from training.targets import detect_lora_targets, target_regex
from tuneserve.errors import ModelError
from tuneserve.manifest import write_json_atomic
from tuneserve.models import BaseModelRef

log = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"


class TextClassifier(nn.Module):
    """encoder -> pooled vector -> dropout -> linear logits."""

    def __init__(
        self, encoder: nn.Module, hidden_size: int, num_labels: int, pooling: str, dropout: float
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.freeze_encoder = False

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The pooled sentence vector of each text."""
        states = self.encoder(**batch).last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                pooled = self.encode(batch)
        else:
            pooled = self.encode(batch)
        return self.classifier(self.dropout(pooled))

    def train(self, mode: bool = True) -> TextClassifier:
        super().train(mode)
        if self.freeze_encoder:  # a frozen encoder is a fixed feature extractor: no dropout
            self.encoder.eval()
        return self


def load_tokenizer(ref: BaseModelRef) -> Any:
    """The base model's fast tokenizer."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref.path, use_fast=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load a tokenizer from base model {ref.name!r} ({ref.path}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc


def check_base_model(ref: BaseModelRef) -> Any:
    """Read the base model's config and refuse models that are not sequence classifiers."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    try:
        config = AutoConfig.from_pretrained(ref.path)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read the config of base model {ref.name!r} ({ref.path}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ModelError(
            f"base model {ref.name!r} is a {config.model_type!r} model, which transformers "
            "cannot use as a sequence classifier: choose an encoder such as BERT, DistilBERT, "
            "RoBERTa or MiniLM"
        )
    return config


def load_encoder(ref: BaseModelRef) -> tuple[nn.Module, Any]:
    """Load the pretrained encoder (without its pooler, which the head does not use)."""
    from transformers import AutoModel

    config = check_base_model(ref)
    extra = {"add_pooling_layer": False} if _has_pooler_arg(config.model_type) else {}
    try:
        encoder = AutoModel.from_pretrained(ref.path, config=config, **extra)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"cannot load base model {ref.name!r} ({ref.path}): {str(exc).splitlines()[0]}"
        ) from exc
    return encoder, config


def _has_pooler_arg(model_type: str) -> bool:
    return model_type in ("bert", "roberta", "xlm-roberta", "camembert")


def build_classifier(ref: BaseModelRef, cfg: ModelConfig, num_labels: int) -> TextClassifier:
    """A fresh classifier on the pretrained encoder."""
    encoder, config = load_encoder(ref)
    return TextClassifier(
        encoder, config.hidden_size, num_labels, cfg.pooling, cfg.classifier_dropout
    )


def linear_module_names(module: nn.Module) -> list[str]:
    """Dotted names of every nn.Linear inside ``module``."""
    return [name for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]


def resolve_lora_targets(model: TextClassifier, cfg: LoraConfig) -> list[str]:
    """The configured target names, or those detected for the encoder's architecture."""
    names = linear_module_names(model.encoder)
    if cfg.target_modules == "auto":
        return detect_lora_targets(model.encoder.config.model_type, names)
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    unknown = [t for t in cfg.target_modules if t not in leaves]
    if unknown:
        raise ModelError(
            f"lora.target_modules names {unknown} that the encoder does not have "
            f"(linear layers: {', '.join(sorted(leaves))})"
        )
    return list(cfg.target_modules)


def build_lora_config(cfg: LoraConfig, targets: list[str]) -> Any:
    """The one place a peft LoraConfig is built."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_regex(targets),
        bias="none",
    )


def add_lora(model: TextClassifier, cfg: LoraConfig, seed: int) -> list[str]:
    """Wrap the encoder with LoRA adapters; return the adapted module names."""
    from peft import get_peft_model

    targets = resolve_lora_targets(model, cfg)
    model.encoder = get_peft_model(model.encoder, build_lora_config(cfg, targets))
    if cfg.init_b_nonzero:
        generator = torch.Generator().manual_seed(seed)
        for name, param in model.encoder.named_parameters():
            if "lora_B" in name:
                with torch.no_grad():
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return targets


def freeze_encoder(model: TextClassifier) -> None:
    """The baseline: no encoder weight trains; only the head does."""
    for param in model.encoder.parameters():
        param.requires_grad_(False)
    model.freeze_encoder = True


def parameter_counts(model: nn.Module) -> dict[str, int | float]:
    """Trainable and total parameters (LoRA weights counted once, base weights once)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainable": trainable,
        "total": total,
        "trainable_percent": round(100.0 * trainable / total, 4),
    }


def save_head(model: TextClassifier, path: Path) -> None:
    """The classification layer as safetensors (keys ``weight`` and ``bias``)."""
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()},
        str(path),
    )


def save_adapter(model: TextClassifier, directory: Path, base_name: str) -> None:
    """The LoRA adapter as peft writes it, with the base model recorded by name, not local path."""
    import json

    model.encoder.save_pretrained(str(directory), safe_serialization=True)
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_name
    write_json_atomic(config_path, config)


def load_trained(
    ref: BaseModelRef,
    cfg: ModelConfig,
    num_labels: int,
    run_dir: Path,
    has_adapter: bool,
    encoder_dir: str | None = None,
) -> TextClassifier:
    """Rebuild a trained classifier from its run directory; ``encoder_dir``: the run's own
    encoder (a distilled student) instead of the base model's."""
    from peft import PeftModel
    from safetensors.torch import load_file

    if encoder_dir is None:
        model = build_classifier(ref, cfg, num_labels)
    else:
        own = BaseModelRef(ref.name, str(run_dir / encoder_dir), "directory")
        model = build_classifier(own, cfg, num_labels)
    if has_adapter:
        model.encoder = PeftModel.from_pretrained(model.encoder, str(run_dir / ADAPTER_DIR))
    model.classifier.load_state_dict(load_file(str(run_dir / HEAD_FILE)))
    return model.eval()
