from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from export.config import ExportConfig
from export.model import load_merged
from export.optimize import ffn_output_nodes, integer_op_counts
from export.parity import quantized_gate
from export.run import run_export
from tuneserve.cli import main
from tuneserve.details import ExportDetails
from tuneserve.errors import ManifestError, ModelError
from tuneserve.inference import encode_batch, load_tokenizer, make_session, session_logits
from tuneserve.manifest import read_manifest


@pytest.fixture
def exports(tiny_exports: dict[str, Path]) -> dict[str, Path]:
    """cpu-int8 exports of the tiny LoRA and head runs (built once per session)."""
    return tiny_exports


def negate_logits(source: Path, target: Path) -> None:
    """Damage a model: its logits come out negated, so every binary prediction flips."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source))
    producer = next(n for n in model.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_raw"
    model.graph.node.append(helper.make_node("Neg", ["logits_raw"], ["logits"], name="damage"))
    onnx.save(model, str(target))


def _read(path: Path) -> tuple[list[str], list[int]]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def test_merge_matches_unmerged_lora(tiny_runs: dict[str, Path], tiny_bert: Path) -> None:
    from training.config import TrainingConfig
    from training.model import load_trained
    from tuneserve.models import resolve_base_model

    run = tiny_runs["lora"]
    manifest = read_manifest(run)
    cfg = TrainingConfig.model_validate(manifest.config)
    unmerged = load_trained(resolve_base_model(str(tiny_bert)), cfg.model, 2, run, True)
    merged = load_merged(run, manifest)
    assert merged.merged_lora
    texts, _ = _read(run / "eval" / "test.jsonl")
    tok = load_tokenizer(run / "tokenizer" / "tokenizer.json", 32)
    feed = {
        k: torch.from_numpy(v)
        for k, v in encode_batch(
            tok, texts[:16], ["input_ids", "attention_mask", "token_type_ids"]
        ).items()
    }
    with torch.no_grad():
        a, b = unmerged(**feed), merged.model(**feed)
    assert float((a - b).abs().max()) <= 1e-5
    # the adapter matters: without it the logits differ (B was initialised non-zero)
    base = load_trained(resolve_base_model(str(tiny_bert)), cfg.model, 2, run, False)
    with torch.no_grad():
        assert float((base(**feed) - b).abs().max()) > 1e-4


def test_export_outputs_and_manifest(exports: dict[str, Path]) -> None:
    run = exports["lora"]
    manifest = read_manifest(run, stage="export")  # every sha256 checked
    d = manifest.details_as(ExportDetails)
    assert d.profile == "cpu-int8"
    assert d.opset == 17
    assert d.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert d.id2label == {"0": "negative", "1": "positive"}
    assert d.max_length == 32 and d.pooling == "mean"
    assert d.quantization is not None and d.quantization.per_channel is True
    assert d.quantization.isa in ("avx512_vnni", "avx2", "arm64")
    assert d.provider_hints == ["CPUExecutionProvider"]
    assert manifest.inputs[0].role == "train_run"
    assert {
        "merged/model.safetensors",
        "merged/head.safetensors",
        "onnx/model.fp32.onnx",
        "onnx/model.int8.onnx",
        "tokenizer/tokenizer.json",
        "parity",
        "quantization",
    } <= set(manifest.artifacts)
    # each file is listed (and hashed) once; the details point at the served one
    paths = [entry.path for entry in manifest.artifacts.values()]
    assert len(paths) == len(set(paths))
    assert d.serving_model in paths and d.fp32_model in paths
    assert not (run / "onnx" / "model.raw.onnx").exists()
    assert json.loads((run / "quantization.json").read_text())["fallback_used"] is False
    assert manifest.metrics["onnx_max_abs_diff"] <= 1e-4
    assert manifest.metrics["dev_agreement"] >= 0.97


def test_export_manifests_round_trip(exports: dict[str, Path]) -> None:
    """What the export wrote reads back typed and dumps back to exactly the same JSON."""
    for key in ("lora-cpu-int8", "head-cpu-int8", "lora-cpu-fp32"):
        raw = json.loads((exports[key] / "manifest.json").read_text())
        manifest = read_manifest(exports[key], stage="export")
        details = manifest.details_as(ExportDetails)
        assert manifest.model_dump(mode="json") == raw
        assert ExportDetails.model_validate_json(details.model_dump_json()) == details
        # the side files hold the same typed reports as the manifest
        parity = json.loads((exports[key] / "parity.json").read_text())
        assert parity == details.parity.model_dump(mode="json")
        if details.quantization is not None:
            quantization = json.loads((exports[key] / "quantization.json").read_text())
            assert quantization == details.quantization.model_dump(mode="json")
        else:
            assert not (exports[key] / "quantization.json").exists()


def test_fp32_onnx_matches_pytorch_from_files(exports: dict[str, Path]) -> None:
    from export.bench import _pytorch_runner

    run = exports["lora"]
    d = read_manifest(run).details_as(ExportDetails)
    texts, _ = _read(Path(read_manifest(run).inputs[0].path).parent / "eval" / "test.jsonl")
    tok = load_tokenizer(run / "tokenizer" / "tokenizer.json", 32)
    torch_run, _ = _pytorch_runner(run, d.model_dump())
    session = make_session(run / "onnx" / "model.fp32.onnx")
    feed = encode_batch(tok, texts, d.input_names)
    diff = np.abs(torch_run(feed) - session.run(["logits"], feed)[0]).max()
    assert diff <= 1e-4


def test_int8_graph_has_integer_matmuls(exports: dict[str, Path]) -> None:
    counts = integer_op_counts(exports["lora"] / "onnx" / "model.int8.onnx")
    assert counts.get("MatMulInteger", 0) + counts.get("DynamicQuantizeMatMul", 0) > 0
    # the most sensitive feed-forward output projections are block-wise; the choices are recorded
    quant = read_manifest(exports["lora"]).details_as(ExportDetails).quantization
    assert quant is not None
    assert set(quant.blockwise_sensitivity) == set(
        ffn_output_nodes(exports["lora"] / "onnx" / "model.fp32.onnx")
    )
    assert 1 <= counts.get("MatMulNBits", 0) == len(quant.blockwise_nodes) <= 2
    assert quant.embeddings == "per_row"
    assert quant.smoothing.mode == "auto"
    assert set(quant.smoothing.nodes).isdisjoint(quant.blockwise_nodes)
    assert integer_op_counts(exports["lora"] / "onnx" / "model.fp32.onnx") == {}


def test_head_only_run_exports_the_same_way(exports: dict[str, Path]) -> None:
    manifest = read_manifest(exports["head"], stage="export")
    assert manifest.details_as(ExportDetails).merged_lora is False
    assert manifest.metrics["onnx_max_abs_diff"] <= 1e-4


def test_distilled_student_exports_with_its_own_layers(
    tiny_student: Path, exports: dict[str, Path], tmp_path: Path
) -> None:
    """A 1-layer student of the 2-layer tiny model exports like any run: 1 layer in the graph,
    the fp32 parity and INT8 gates passed."""
    code = main(["export", "--from", str(tiny_student), "--profile", "cpu-int8",
                 "--set", f'output_root="{tmp_path}"'])  # fmt: skip
    assert code == 0
    run = tmp_path / "export" / "s-distill-cpu-int8"
    manifest = read_manifest(run, stage="export")
    d = manifest.details_as(ExportDetails)
    assert (d.train_method, d.train_run, d.merged_lora) == ("distill", "s-distill", False)
    assert d.adapter_sha256 is None and d.head_sha256 is not None
    assert d.parity.fp32_vs_pytorch.passed and manifest.metrics["onnx_max_abs_diff"] <= 1e-4
    gate = d.parity.quantized_vs_fp32
    assert gate is not None and gate.passed
    assert json.loads((run / "merged" / "config.json").read_text())["num_hidden_layers"] == 1
    assert len(ffn_output_nodes(run / "onnx" / "model.fp32.onnx")) == 1
    assert len(ffn_output_nodes(exports["lora"] / "onnx" / "model.fp32.onnx")) == 2
    # the student's ONNX model is smaller than the 2-layer teacher's
    own = (run / "onnx" / "model.fp32.onnx").stat().st_size
    assert own < (exports["lora"] / "onnx" / "model.fp32.onnx").stat().st_size
    # its encoder is the run's own, not the base model's: a missing one is named
    broken = tmp_path / "broken"
    shutil.copytree(tiny_student, broken)
    shutil.rmtree(broken / "encoder")
    with pytest.raises(ManifestError, match=r"lacks its encoder \(encoder/\): run the training"):
        load_merged(broken, read_manifest(broken, verify=False))


def test_gate_fails_on_damaged_model_and_passes_on_good(
    exports: dict[str, Path], tmp_path: Path
) -> None:

    run = exports["lora"]
    d = read_manifest(run).details_as(ExportDetails)
    texts, labels = _read(Path(read_manifest(run).inputs[0].path).parent / "eval" / "dev.jsonl")
    tok = load_tokenizer(run / "tokenizer" / "tokenizer.json", 32)
    fp32 = session_logits(make_session(run / "onnx" / "model.fp32.onnx"), tok, texts, 1)
    good = session_logits(make_session(run / d.serving_model), tok, texts, 1)
    assert quantized_gate(fp32, good, labels, 0.97, 0.005)["passed"]

    negate_logits(run / "onnx" / "model.fp32.onnx", tmp_path / "damaged.onnx")
    damaged = session_logits(make_session(tmp_path / "damaged.onnx"), tok, texts, 1)
    gate = quantized_gate(fp32, damaged, labels, 0.97, 0.005)
    assert not gate["passed"]
    assert gate["failures"][0].startswith("agreement ")


def _damage_unless_excluded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make INT8 output wrong unless the fallback excludes nodes (a damaged quantiser)."""
    import export.quantize

    real = export.quantize.quantize_int8

    def damaged(
        source: Path, target: Path, isa: str, per_channel: bool, exclude: list[str], **kw: Any
    ) -> dict:
        settings = real(source, target, isa, per_channel, exclude, **kw)
        if not exclude:
            negate_logits(target, target)
        return settings

    monkeypatch.setattr(export.quantize, "quantize_int8", damaged)


def test_gate_failure_retries_with_ffn_outputs_in_fp32(
    tiny_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _damage_unless_excluded(monkeypatch)
    out = run_export(tiny_runs["lora"], ExportConfig(output_root=str(tmp_path)))
    manifest = read_manifest(out)
    attempts = json.loads((out / "parity.json").read_text())["quantization_attempts"]
    assert [a["passed"] for a in attempts] == [False, True]
    assert attempts[1]["nodes_kept_fp32"] == 2  # two layers, one FFN output projection each
    quant = manifest.details_as(ExportDetails).quantization
    assert quant is not None and quant.fallback_used is True
    assert len(quant.nodes_excluded) == 2


def test_gate_failure_fails_the_export(
    tiny_runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _damage_unless_excluded(monkeypatch)
    code = main(
        [
            "export",
            "--from",
            str(tiny_runs["lora"]),
            "--set",
            f'output_root="{tmp_path}"',
            "--set",
            "quantization.on_gate_failure=fail",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "INT8 model fails its gate on 50 dev examples: agreement" in err
    assert list((tmp_path / "export").iterdir()) == []


def test_gpu_fp16_profile_builds_on_cpu(tiny_runs: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    out = run_export(tiny_runs["lora"], ExportConfig(profile="gpu-fp16", output_root=str(tmp_path)))
    manifest = read_manifest(out)
    details = manifest.details_as(ExportDetails)
    assert details.serving_model == "onnx/model.fp16.onnx"
    assert details.provider_hints[0] == "CUDAExecutionProvider"
    model = onnx.load(str(out / "onnx" / "model.fp16.onnx"))
    kinds = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds
    # fp32 inputs and outputs are kept, so callers need not know
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    if not torch.cuda.is_available():
        assert json.loads((out / "parity.json").read_text())["fp16"]["measured"] is False


@pytest.mark.gpu
def test_gpu_fp16_on_cuda(tiny_runs: dict[str, Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider")
    out = run_export(tiny_runs["lora"], ExportConfig(profile="gpu-fp16", output_root=str(tmp_path)))
    assert json.loads((out / "parity.json").read_text())["fp16"]["gate"]["passed"]


def test_bench_model(exports: dict[str, Path], tmp_path: Path) -> None:
    code = main(
        ["bench-model", "--from", str(exports["lora"]), "--sentences", "20", "--out", str(tmp_path)]
    )
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["models"]) == {"pytorch-fp32-eager", "onnx-fp32", "serving-cpu-int8"}
    for figures in report["models"].values():
        assert figures["batch1_p50_ms"] > 0 and figures["batch32_sentences_per_s"] > 0
        assert 0 <= figures["accuracy"] <= 1
    assert report["models"]["onnx-fp32"]["agreement_with_pytorch"] == 1.0
    # fp32 answers do not depend on batch composition (padding is masked)
    assert report["models"]["onnx-fp32"]["batch32_agreement_with_batch1"] == 1.0
    assert report["models"]["serving-cpu-int8"]["batch32_agreement_with_batch1"] >= 0.9
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "| serving-cpu-int8 |" in (tmp_path / "bench.md").read_text()
    # the benchmark process's own memory, and no CUDA figure on a CPU-only export
    memory = report["process_memory"]
    assert 0 < memory["rss_mib"] <= memory["peak_rss_mib"] and "cuda_mib" not in memory
    assert report["models"]["pytorch-fp32-eager"]["rss_growth_at_load_mib"] > 0


# --- bad input ---------------------------------------------------------------------------------


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    return err


def test_train_dir_without_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    err = _fails(capsys, "export", "--from", str(tmp_path / "run"))
    assert "has no manifest.json" in err


def test_hash_mismatch_and_missing_adapter(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_runs["lora"], copy)
    (copy / "head.safetensors").write_bytes(b"tampered")
    err = _fails(capsys, "export", "--from", str(copy), "--set", f'output_root="{tmp_path}"')
    assert "head (head.safetensors) does not match its recorded sha256" in err
    shutil.rmtree(copy)
    shutil.copytree(tiny_runs["lora"], copy)
    shutil.rmtree(copy / "adapter")
    err = _fails(capsys, "export", "--from", str(copy), "--set", f'output_root="{tmp_path}"')
    assert "adapter/adapter_model.safetensors (adapter/adapter_model.safetensors) is missing" in err
    assert not (tmp_path / "export").exists() or list((tmp_path / "export").iterdir()) == []


def test_unsupported_architecture(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AlbertConfig, AlbertModel

    from tests.conftest import make_sentences, write_tsv

    albert = tmp_path / "albert"
    shutil.copytree(tiny_bert, albert)
    AlbertModel(
        AlbertConfig(
            vocab_size=80,
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=20,
        )
    ).save_pretrained(albert)
    rows = make_sentences(80, seed=3)
    for name, part in (("train", rows[:50]), ("dev", rows[50:65]), ("test", rows[65:])):
        write_tsv(tmp_path / "data" / f"{name}.tsv", part)
    assert (
        main(
            [
                "train",
                "--method",
                "head",
                "--data",
                str(tmp_path / "data"),
                "--run-id",
                "a",
                "--set",
                f'model.base="{albert}"',
                "--set",
                f'output.root="{tmp_path}"',
                "--set",
                "head.epochs=1",
            ]
        )
        == 0
    )
    err = _fails(
        capsys,
        "export",
        "--from",
        str(tmp_path / "train" / "a-head"),
        "--set",
        f'output_root="{tmp_path}"',
    )
    assert "cannot export a 'albert' model: supported architectures are" in err


def test_corrupt_onnx_file(
    exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x08\x07not an onnx model")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        make_session(garbage)
    copy = tmp_path / "export"
    shutil.copytree(exports["lora"], copy)
    with open(copy / "onnx" / "model.int8.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00" * 64)
    err = _fails(capsys, "bench-model", "--from", str(copy), "--out", str(tmp_path / "b"))
    assert "model.int8.onnx) does not match its recorded sha256" in err


def test_out_of_space_leaves_no_export(
    tiny_runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import export.run

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export.run, "save_merged", full_disk)
    err = _fails(
        capsys, "export", "--from", str(tiny_runs["lora"]), "--set", f'output_root="{tmp_path}"'
    )
    assert "out of disk space" in err
    assert list((tmp_path / "export").iterdir()) == []
