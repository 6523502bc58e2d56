"""Each stage's manifest details: typed, versioned, filled by the writer, validated on read."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneserve.errors import ManifestError

DETAILS_VERSION = 1
#: head: linear probe; lora: LoRA + head; distill: a smaller student of a teacher run
TrainMethod = Literal["head", "lora", "distill"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StageDetails(_Strict):
    """What every stage's details carry: the details schema version they were written with."""

    stage: ClassVar[str] = ""
    redo: ClassVar[str] = "run the stage again with this version of tuneserve"
    details_version: int = Field(DETAILS_VERSION, description="schema version of this block")


# --- train --------------------------------------------------------------------------------


class BaseModelInfo(_Strict):
    """The pretrained encoder a run was trained on."""

    name: str = Field(description="the base model as configured: hub id or local directory")
    source: Literal["directory", "package", "hub"] = Field(description="where it was found")
    fingerprint: str | None = Field(
        description="sha256 over the base model's weight files; None for a hub id"
    )


class ClassifierInfo(_Strict):
    """How to rebuild the trained classifier from the run directory."""

    pooling: Literal["mean", "cls"] = Field(description="how token states become one vector")
    max_length: int = Field(gt=0, description="tokens per text the model was trained with")
    num_labels: int = Field(gt=0, description="number of classes")
    hidden_size: int = Field(gt=0, description="width of the pooled vector the head reads")
    head_file: str = Field(description="the classification head's file, relative to the run")
    adapter_dir: str | None = Field(description="the LoRA adapter's directory; None: head only")
    encoder_dir: str | None = Field(
        None,
        description="the run's own full encoder (a distilled student); None: the base model's",
    )
    lora_targets: list[str] = Field(description="module names LoRA was applied to")
    model_input_names: list[str] = Field(description="the encoder's input tensors, in order")


class DataFile(_Strict):
    """A split's source and, for a local file, its sha256."""

    path: str = Field(description="the file (or hub id) the split was read from")
    sha256: str | None = Field(None, description="sha256 of the file; None for hub splits")


class ParallelInfo(_Strict):
    """How training was spread over processes (one process: world size 1, backend none)."""

    world_size: int = Field(1, ge=1, description="training processes (ranks), all nodes together")
    backend: Literal["none", "gloo", "nccl"] = Field(
        "none", description="torch.distributed backend: gloo on CPU, nccl on GPUs"
    )
    global_batch_size: int | None = Field(
        None, ge=1, description="examples per optimiser step over all ranks (batch x accumulation)"
    )
    per_rank_batch_size: int | None = Field(
        None, ge=1, description="largest share of a batch one rank takes (ceil(batch / world))"
    )


class DistillInfo(_Strict):
    """What a distilled student learnt from and how."""

    teacher_run: str = Field(description="the teacher train run's id")
    teacher_path: str = Field(description="the teacher run directory as given")
    teacher_method: TrainMethod = Field(description="the teacher's training method")
    teacher_test_accuracy: float | None = Field(description="the teacher's test accuracy")
    layers: int = Field(ge=1, description="transformer layers of the student")
    base_layers: int = Field(ge=2, description="transformer layers of the base model")
    temperature: float = Field(gt=0, description="softmax temperature of the soft labels")
    alpha_kl: float = Field(ge=0, description="weight of KL(teacher_T || student_T) * T^2")
    alpha_hard: float = Field(ge=0, description="weight of the hard-label cross-entropy")


class TrainDetails(StageDetails):
    """A train run: the method, the base model, the classifier and the labels."""

    stage: ClassVar[str] = "train"
    redo: ClassVar[str] = "train it again with this version of tuneserve (`tuneserve train`)"
    method: TrainMethod = Field(
        description="head: linear probe; lora: LoRA + head; distill: a student of a teacher run"
    )
    base_model: BaseModelInfo = Field(description="the base model trained on")
    model: ClassifierInfo = Field(description="how to rebuild the classifier")
    id2label: dict[str, str] = Field(description="class id (as a string) -> label name")
    label2id: dict[str, int] = Field(description="label name -> class id")
    raw_labels: list[str] = Field(description="the label as the data spells it, per class id")
    test_fingerprint: str = Field(description="sha256 of the cleaned test split (pairs runs)")
    data_files: dict[str, DataFile] = Field(description="split name -> its source")
    parallel: ParallelInfo = Field(
        default_factory=lambda: ParallelInfo.model_validate({}),
        description="processes, backend and batch split (runs before it: one process)",
    )
    distill: DistillInfo | None = Field(None, description="the teacher and loss of a student")


# --- compare ------------------------------------------------------------------------------


class CompareDetails(StageDetails):
    """A comparison of two train runs on the same test split."""

    stage: ClassVar[str] = "compare"
    redo: ClassVar[str] = "train both methods again with this version of tuneserve"
    run_a: str = Field(description="run id of A (the baseline)")
    run_b: str = Field(description="run id of B (the tuned model)")
    method_a: TrainMethod = Field(description="A's training method")
    method_b: TrainMethod = Field(description="B's training method")
    test_examples: int = Field(ge=0, description="number of paired test examples")


# --- cv ---------------------------------------------------------------------------------


class CVDetails(StageDetails):
    """K-fold cross-validation: K train runs on stratified folds of train, inside the run."""

    stage: ClassVar[str] = "cv"
    redo: ClassVar[str] = "run the cross-validation again (`tuneserve train --cv K`)"
    method: TrainMethod = Field(description="the training method of every fold")
    folds: int = Field(ge=2, description="K, the number of folds")
    seed: int = Field(description="seed of the fold assignment (and of each fold's training)")
    fold_runs: list[str] = Field(description="each fold's train run, relative to this run")
    evaluated_on: str = Field(description="what each fold's figures are measured on")
    train_examples: int = Field(ge=0, description="cleaned train examples split into folds")


# --- export -------------------------------------------------------------------------------


class Fp32Parity(_Strict):
    """fp32 ONNX against the merged PyTorch model."""

    examples: int = Field(ge=0, description="dev examples compared")
    batch_size: int = Field(gt=0, description="batch size of both runs")
    max_abs_diff: float = Field(description="largest absolute logit difference")
    threshold: float = Field(description="largest difference allowed")
    passed: bool = Field(description="max_abs_diff <= threshold")
    prediction_agreement: float = Field(description="share of equal predicted classes")


class GateResult(_Strict):
    """A reduced-precision model gated against fp32 on the labelled dev split."""

    examples: int = Field(ge=0, description="dev examples scored")
    agreement: float = Field(description="share of predictions equal to fp32's")
    fp32_accuracy: float = Field(description="fp32 accuracy on these examples")
    quantized_accuracy: float = Field(description="the reduced-precision model's accuracy")
    accuracy_drop: float = Field(description="fp32 accuracy minus quantized accuracy")
    logit_rms_diff: float = Field(description="root mean square logit difference to fp32")
    min_agreement: float = Field(description="the gate's smallest allowed agreement")
    max_accuracy_drop: float = Field(description="the gate's largest allowed accuracy drop")
    passed: bool = Field(description="no failures")
    failures: list[str] = Field(description="each broken bound, in words")


class QuantizationAttempt(GateResult):
    """One INT8 try and its gate."""

    nodes_kept_fp32: int = Field(ge=0, description="nodes left in fp32 on this try")


class Fp16Check(_Strict):
    """The fp16 model's gate, or why it was not measured (no CUDA where it was built)."""

    measured: bool = Field(description="whether the gate ran")
    reason: str | None = Field(None, description="why it did not run")
    gate: GateResult | None = Field(None, description="the gate, when it ran")


class ParityReport(_Strict):
    """Every parity and accuracy gate the export ran (also written to parity.json)."""

    fp32_vs_pytorch: Fp32Parity = Field(description="fp32 ONNX vs PyTorch")
    dev_accuracy_fp32: float = Field(description="fp32 ONNX accuracy on the dev split")
    quantized_vs_fp32: GateResult | None = Field(None, description="the INT8 model's final gate")
    quantization_attempts: list[QuantizationAttempt] = Field(
        default_factory=list, description="every INT8 try, in order"
    )
    fp16: Fp16Check | None = Field(None, description="the fp16 model's gate")

    def serving_gate(self) -> GateResult | None:
        """The gate of the reduced-precision serving model, when one was measured."""
        return self.quantized_vs_fp32 or (self.fp16.gate if self.fp16 else None)


class SmoothedNode(_Strict):
    """The smoothing strength chosen for one MatMul and the error it removed."""

    alpha: float = Field(description="smoothing strength; 0 leaves the node alone")
    error_before: float = Field(description="relative INT8 output error without smoothing")
    error_after: float = Field(description="relative INT8 output error with the chosen alpha")


class Smoothing(_Strict):
    """Activation smoothing before INT8."""

    mode: Literal["auto", "off"] = Field(description="auto: smooth where it helps; off")
    calibration_examples: int | None = Field(None, description="texts the choice was made on")
    nodes: dict[str, SmoothedNode] = Field(default_factory=dict, description="node -> choice")


class Quantization(_Strict):
    """How the INT8 serving model was made (also written to quantization.json)."""

    isa: Literal["avx512_vnni", "avx2", "arm64"] = Field(description="instruction-set preset")
    per_channel: bool = Field(description="one weight scale per output channel")
    weight_type: str = Field(description="weight integer type")
    activation_type: str = Field(description="activation integer type")
    op_types: list[str] = Field(description="operator types quantised dynamically")
    nodes_excluded: list[str] = Field(description="nodes kept in fp32")
    blockwise_nodes: list[str] = Field(description="MatMuls quantised block-wise")
    block_size: int = Field(gt=0, description="block size of the block-wise MatMuls")
    embeddings: Literal["per_row", "per_tensor"] = Field(description="embedding table scales")
    reduce_range: bool = Field(description="7-bit weights (the ISA preset)")
    embedding_tables: dict[str, list[int]] | None = Field(
        None, description="per-row int8 embedding tables and their shapes"
    )
    smoothing: Smoothing = Field(description="activation smoothing")
    blockwise_sensitivity: dict[str, float] = Field(
        default_factory=dict, description="candidate node -> logit error when quantised alone"
    )
    fallback_used: bool = Field(description="whether feed-forward outputs were kept in fp32")

    def label(self) -> str:
        """The numerics named by each fidelity step, e.g. ``int8-dynamic-avx2+smoothed16
        +blockwise3+row-emb`` (nodes smoothed, MatMuls block-wise, per-row int8 embeddings)."""
        smoothed = sum(1 for node in self.smoothing.nodes.values() if node.alpha > 0)
        steps = [
            f"smoothed{smoothed}" if smoothed else "",
            f"blockwise{len(self.blockwise_nodes)}" if self.blockwise_nodes else "",
            "row-emb" if self.embeddings == "per_row" else "",
            "fp32-ffn" if self.fallback_used else "",
        ]
        return "+".join([f"int8-dynamic-{self.isa}", *filter(None, steps)])


class ServingPolicy(_Strict):
    """The ONNX Runtime policy the export evaluated with."""

    batch_size: int = Field(gt=0, description="dev evaluation batch size")
    intra_op_threads: int = Field(ge=0, description="ONNX Runtime threads (0 = all cores)")


Profile = Literal["cpu-int8", "cpu-fp32", "gpu-fp16"]


class ExportDetails(StageDetails):
    """An export run: what the service loads and how it was made."""

    stage: ClassVar[str] = "export"
    redo: ClassVar[str] = "export it again with this version of tuneserve (`tuneserve export`)"
    profile: Profile = Field(description="the export profile")
    opset: int = Field(description="ONNX opset")
    input_names: list[str] = Field(description="the ONNX model's inputs, in order")
    output_names: list[str] = Field(description="the ONNX model's outputs")
    serving_model: str = Field(description="the model the service runs, relative to the run")
    fp32_model: str = Field(description="the fp32 reference model, relative to the run")
    tokenizer: str = Field(description="tokenizer.json, relative to the run")
    id2label: dict[str, str] = Field(description="class id (as a string) -> label name")
    label2id: dict[str, int] = Field(description="label name -> class id")
    max_length: int = Field(gt=0, description="tokens per text the model was trained with")
    pooling: Literal["mean", "cls"] = Field(description="how token states become one vector")
    pad_token_id: int = Field(ge=0, description="the tokenizer's padding id")
    base_model: BaseModelInfo = Field(description="the base model of the train run")
    train_method: TrainMethod = Field(description="the train run's method")
    train_run: str = Field(description="the train run's id")
    merged_lora: bool = Field(description="whether a LoRA adapter was merged into the base")
    adapter_sha256: str | None = Field(description="sha256 of the adapter weights; None: none")
    head_sha256: str | None = Field(description="sha256 of the trained head")
    quantization: Quantization | None = Field(description="INT8 settings; None: not INT8")
    provider_hints: list[str] = Field(description="ONNX Runtime providers to run it with")
    fused_operators: dict[str, int] = Field(description="fused operator type -> count")
    integer_operators: dict[str, int] = Field(description="integer operator type -> count")
    parity: ParityReport = Field(description="the parity and accuracy gates")
    serving_policy: ServingPolicy = Field(description="the evaluation policy")

    def labels(self) -> list[str]:
        """Label names in class-id order."""
        return [self.id2label[str(i)] for i in range(len(self.id2label))]

    def numerics(self) -> str:
        """What the service calls the serving model's numerics: the INT8 label, fp16 or fp32."""
        if self.quantization is not None:
            return self.quantization.label()
        return "fp16" if self.profile == "gpu-fp16" else "fp32"


# --- analysis (`tuneserve analyze`) -----------------------------------------------------------


class AnalysisDetails(StageDetails):
    """An error analysis of a train run (optionally against a baseline run)."""

    stage: ClassVar[str] = "analysis"
    redo: ClassVar[str] = (
        "analyse the run again with this version of tuneserve (`tuneserve analyze`)"
    )
    run: str = Field(description="run id of the analysed train run")
    method: str = Field(description="its training method")
    baseline_run: str | None = Field(None, description="run id of the --against run; None: none")
    test_examples: int = Field(ge=0, description="test examples analysed")
    ece_bins: int = Field(gt=0, description="equal-width confidence bins of the ECE")
    temperature: float | None = Field(
        None, description="temperature fitted on dev; None: no dev predictions stored"
    )


AnyDetails = TrainDetails | CompareDetails | CVDetails | ExportDetails | AnalysisDetails
DETAILS_BY_STAGE: dict[str, type[StageDetails]] = {
    kind.stage: kind
    for kind in (TrainDetails, CompareDetails, CVDetails, ExportDetails, AnalysisDetails)
}


def parse_details(stage: str, raw: Any) -> StageDetails:
    """Validate a manifest's details block against its stage's model, naming the fix."""
    kind = DETAILS_BY_STAGE.get(stage)
    if kind is None:
        raise ManifestError(
            f"no details schema for a {stage!r} run: known stages are "
            + ", ".join(sorted(DETAILS_BY_STAGE))
        )
    if isinstance(raw, kind):
        return raw
    if not isinstance(raw, dict):
        raise ManifestError(f"the {stage} details are not a JSON object: {kind.redo}")
    version = raw.get("details_version")
    if version != DETAILS_VERSION:
        written = (
            "were written before details were versioned"
            if version is None
            else f"have schema version {version!r}"
        )
        raise ManifestError(
            f"the {stage} details {written}; this tuneserve reads version {DETAILS_VERSION}: "
            + kind.redo
        )
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        problems = [
            "details." + ".".join(str(part) for part in error["loc"]) + f": {error['msg']}"
            for error in exc.errors()
        ]
        raise ManifestError(
            f"the {stage} details are not valid ({'; '.join(problems)}): {kind.redo}"
        ) from exc
