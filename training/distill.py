"""Distillation: a student made of the base model's first layers, taught by a trained run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checks import CheckedData
from training.config import DistillConfig, ModelConfig, TrainingConfig
from training.device import choose_device
from training.distributed import World
from training.loop import LossFn, collate, encode_texts, make_batches
from training.model import TextClassifier, check_base_model, load_tokenizer, load_trained
from tuneserve.details import DistillInfo, TrainDetails
from tuneserve.errors import ConfigError, DataError, ManifestError, ModelError
from tuneserve.manifest import Manifest, read_manifest
from tuneserve.models import BaseModelRef, resolve_base_model

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    """A finished train run loaded for inference, and the logits it gave so far (by text)."""

    run_dir: Path
    manifest: Manifest
    details: TrainDetails
    model: TextClassifier
    tokenizer: Any
    device: torch.device
    batch_size: int = 128
    cache: dict[str, np.ndarray] = field(default_factory=dict)

    def logits_for(self, texts: list[str]) -> np.ndarray:
        """The teacher's logits of ``texts`` (rows in order); each text is scored only once."""
        from tqdm.auto import tqdm

        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            enc = encode_texts(self.tokenizer, missing, self.details.model.max_length)
            lengths = [len(e["input_ids"]) for e in enc]
            pad = self.tokenizer.pad_token_id or 0
            self.model.eval()
            batches = make_batches(lengths, self.batch_size, None, group_by_length=True)
            with torch.no_grad():
                for idx in tqdm(batches, desc="teacher", unit="batch", dynamic_ncols=True):
                    batch = collate([enc[i] for i in idx], pad)
                    logits = self.model(**{k: v.to(self.device) for k, v in batch.items()})
                    for i, row in zip(idx, logits.float().cpu().numpy(), strict=True):
                        self.cache[missing[i]] = row
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 0))


def load_teacher(path: str | Path, device: torch.device, batch_size: int = 128) -> Teacher:
    """Load a finished train run (head, LoRA or itself a student) as a teacher."""
    run_dir = Path(path)
    try:
        manifest = read_manifest(run_dir, stage="train")
    except ManifestError as exc:
        raise ConfigError(
            f"the teacher {run_dir} is not a finished train run ({exc}): point --teacher at a "
            "directory that `tuneserve train` wrote, e.g. artifacts/train/RUN_ID-lora"
        ) from exc
    details = manifest.details_as(TrainDetails)
    ref = resolve_base_model(details.base_model.name)
    expected = details.base_model.fingerprint
    if expected and details.model.encoder_dir is None and ref.fingerprint() != expected:
        raise ModelError(
            f"base model {ref.name!r} at {ref.path} differs from the one the teacher "
            f"{manifest.run_id} was trained on (weights fingerprint mismatch): install the same "
            "base model version"
        )
    cfg = ModelConfig.model_validate(manifest.config.get("model", {}))
    model = load_trained(
        ref,
        cfg,
        details.model.num_labels,
        run_dir,
        has_adapter=details.model.adapter_dir is not None,
        encoder_dir=details.model.encoder_dir,
    ).to(device)
    tok_dir = run_dir / "tokenizer"
    tokenizer = load_tokenizer(BaseModelRef(str(tok_dir), str(tok_dir), "directory"))
    log.info("teacher %s (%s, %s)", manifest.run_id, details.method, details.base_model.name)
    return Teacher(run_dir, manifest, details, model, tokenizer, device, batch_size)


def check_labels(teacher: Teacher, data: CheckedData) -> None:
    """Refuse a teacher whose classes are not the student's (same raw labels, same order)."""
    if list(teacher.details.raw_labels) != list(data.label_keys):
        raise DataError(
            f"the teacher {teacher.manifest.run_id} was trained on labels "
            f"{teacher.details.raw_labels}, the student's data has {data.label_keys}: "
            "distil from a teacher trained on the same labels"
        )


def build_student(
    ref: BaseModelRef, cfg: ModelConfig, distill: DistillConfig, num_labels: int
) -> TextClassifier:
    """The base model's embeddings and first ``distill.layers`` transformer layers with a fresh
    head, every weight trainable (but the word embeddings, if frozen)."""
    layers = distill.layers
    from transformers import AutoModel

    config = check_base_model(ref)
    base_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    if base_layers < 2:
        raise ModelError(
            f"base model {ref.name!r} has {base_layers} transformer layer(s): a student needs a "
            "base model of at least 2 layers to take fewer of"
        )
    if not 1 <= layers < base_layers:
        raise ConfigError(
            f"distill.layers must be between 1 and {base_layers - 1} (base model {ref.name!r} "
            f"has {base_layers} layers), got {layers}"
        )
    config.num_hidden_layers = layers  # from_pretrained then loads layers 0 .. layers-1
    extra = {"add_pooling_layer": False} if config.model_type in _POOLER_ARG else {}
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the upper layers' weights are left out on purpose
    try:
        encoder = AutoModel.from_pretrained(ref.path, config=config, **extra)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"cannot load base model {ref.name!r} ({ref.path}): {str(exc).splitlines()[0]}"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    if distill.freeze_word_embeddings:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    return TextClassifier(
        encoder, config.hidden_size, num_labels, cfg.pooling, cfg.classifier_dropout
    )


_POOLER_ARG = ("bert", "roberta", "xlm-roberta", "camembert")


def distill_loss(
    teacher_logits: np.ndarray, labels: list[int], cfg: DistillConfig, device: torch.device
) -> LossFn:
    """Per example: alpha_kl * KL(teacher_T || student_T) * T^2 + alpha_hard * CE(hard label).

    The T^2 keeps the soft term's gradients on the scale of the hard term's whatever T is.
    """
    temperature = cfg.temperature
    soft = torch.log_softmax(torch.from_numpy(teacher_logits).float() / temperature, dim=-1)
    hard = torch.tensor(labels, dtype=torch.long)

    def loss(logits: torch.Tensor, idx: list[int]) -> torch.Tensor:
        target = soft[idx].to(device)
        student = torch.log_softmax(logits / temperature, dim=-1)
        kl = (target.exp() * (target - student)).sum(dim=-1) * temperature**2
        ce = nn.functional.cross_entropy(logits, hard[idx].to(device), reduction="none")
        return cfg.alpha_kl * kl + cfg.alpha_hard * ce

    return loss


def agreement(teacher_logits: np.ndarray, student_probs: np.ndarray) -> float:
    """Share of examples where the student predicts the teacher's class."""
    if not len(teacher_logits):
        return 0.0
    return float(np.mean(teacher_logits.argmax(1) == student_probs.argmax(1)))


def teacher_for(cfg: TrainingConfig, data: CheckedData, world: World) -> Teacher | None:
    """The teacher run of a distill config, loaded and checked against the data's labels."""
    if cfg.method != "distill":
        return None
    device, _ = choose_device(cfg, world)
    teacher = load_teacher(str(cfg.distill.teacher), device, cfg.train.eval_batch_size)
    check_labels(teacher, data)
    return teacher


def distill_info(teacher: Teacher, cfg: DistillConfig, ref: BaseModelRef) -> DistillInfo:
    """The manifest's record of a student: its teacher, size and loss."""
    base_layers = int(check_base_model(ref).num_hidden_layers)
    accuracy = teacher.manifest.metrics.get("test_accuracy")
    return DistillInfo(
        teacher_run=teacher.manifest.run_id,
        teacher_path=str(teacher.run_dir),
        teacher_method=teacher.details.method,
        teacher_test_accuracy=float(accuracy) if accuracy is not None else None,
        layers=cfg.layers,
        base_layers=base_layers,
        temperature=cfg.temperature,
        alpha_kl=cfg.alpha_kl,
        alpha_hard=cfg.alpha_hard,
    )
