"""A served variant read through its export manifest: typed details, hashes, numerics label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.config import ServingConfig, load_serving_config
from service.model import VariantModel, model_version, read_export
from tests.service.conftest import write_serving_config
from tuneserve.details import ExportDetails
from tuneserve.errors import ManifestError


def _settings(tmp_path: Path, exports: dict[str, Path]) -> ServingConfig:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    return load_serving_config(
        write_serving_config(tmp_path / "serving.toml", variants, "baseline")
    )


def _copy(export: Path, tmp_path: Path) -> Path:
    target = tmp_path / export.name
    shutil.copytree(export, target)
    return target


def test_read_export_gives_typed_details(tiny_exports: dict[str, Path]) -> None:
    manifest, details = read_export(tiny_exports["lora"])
    assert isinstance(details, ExportDetails) and details is manifest.details
    assert details.labels() == ["negative", "positive"]
    serving = next(a for a in manifest.artifacts.values() if a.path == details.serving_model)
    assert model_version(manifest) == f"{manifest.run_id}@{serving.sha256[:12]}"


def test_a_changed_serving_model_is_refused(tiny_exports: dict[str, Path], tmp_path: Path) -> None:
    export = _copy(tiny_exports["lora"], tmp_path)
    (export / "onnx" / "model.int8.onnx").write_bytes(b"not a model")
    with pytest.raises(ManifestError, match=r"onnx/model.int8.onnx\) does not match its recorded"):
        read_export(export)
    # the fp32 reference model is not loaded by the service, so it may be left out
    fp32 = _copy(tiny_exports["lora"], tmp_path / "other")
    (fp32 / "onnx" / "model.fp32.onnx").unlink()
    read_export(fp32)


def test_an_export_with_old_or_broken_details_says_to_export_again(
    tiny_exports: dict[str, Path], tmp_path: Path
) -> None:
    export = _copy(tiny_exports["lora"], tmp_path)
    path = export / "manifest.json"
    raw = json.loads(path.read_text())
    del raw["details"]["details_version"]
    path.write_text(json.dumps(raw))
    with pytest.raises(
        ManifestError,
        match=r"the export details were written before details were versioned; this tuneserve "
        r"reads version 1: export it again with this version of tuneserve \(`tuneserve export`\)",
    ):
        read_export(export)
    raw["details"] |= {"details_version": 1, "serving_model": None}
    del raw["details"]["tokenizer"]
    path.write_text(json.dumps(raw))
    with pytest.raises(
        ManifestError,
        match=r"the export details are not valid \(details.serving_model: Input should be a valid "
        r"string; details.tokenizer: Field required\): export it again",
    ):
        read_export(export)


def test_the_quantization_name_lists_the_export_steps(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    variant = settings.variants[0].model_copy(update={"path": tiny_exports["lora-cpu-int8"]})
    model = VariantModel(variant, settings)
    quant = model.details.quantization
    assert quant is not None
    smoothed = sum(1 for c in quant.smoothing.nodes.values() if c.alpha > 0)
    expected = f"int8-dynamic-{quant.isa}"
    expected += f"+smoothed{smoothed}" if smoothed else ""
    expected += f"+blockwise{len(quant.blockwise_nodes)}" if quant.blockwise_nodes else ""
    assert model.quantization == expected + "+row-emb" and model.summary()["quantization"] == (
        model.quantization
    )
    fp32 = settings.variants[0].model_copy(update={"path": tiny_exports["lora-cpu-fp32"]})
    assert VariantModel(fp32, settings).quantization == "fp32"
    plain = quant.model_copy(
        update={
            "isa": "avx2",
            "embeddings": "per_tensor",
            "fallback_used": True,
            "smoothing": quant.smoothing.model_copy(update={"mode": "off", "nodes": {}}),
            "blockwise_nodes": [],
        }
    )
    assert plain.label() == "int8-dynamic-avx2+fp32-ffn"


def test_the_models_summary_reads_the_typed_details(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    model = VariantModel(settings.variants[1], settings)
    summary = model.summary()
    details = model.details
    assert summary["train_method"] == details.train_method == "lora"
    assert summary["base_model"] == details.base_model.name
    assert summary["base_model_fingerprint"] == details.base_model.fingerprint
    assert summary["adapter_sha256"] == details.adapter_sha256 is not None
    assert summary["profile"] == "cpu-fp32" and summary["labels"] == ["negative", "positive"]
    assert summary["dev_accuracy_at_export"] == model.manifest.metrics["dev_accuracy_serving"]
