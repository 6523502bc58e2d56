from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_sentences, write_tsv
from training.config import DistillConfig, ModelConfig, TrainingConfig
from training.distill import build_student, distill_loss
from training.model import load_trained
from tuneserve.cli import main
from tuneserve.config import load_config
from tuneserve.details import TrainDetails
from tuneserve.errors import ConfigError
from tuneserve.manifest import read_manifest
from tuneserve.models import resolve_base_model


def _student_argv(teacher: Path, data: Path, tiny_bert: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--method", "distill", "--teacher", str(teacher), "--run-id", "x",
        "--set", f"data.source={json.dumps(str(data))}",
        "--set", f"model.base={json.dumps(str(tiny_bert))}",
        "--set", "model.max_length=32", "--set", "distill.layers=1",
        "--set", "distill.epochs=1", "--set", "train.batch_size=32",
        "--set", f"output.root={json.dumps(str(out))}", *extra,
    ]  # fmt: skip


def test_student_run_has_k_layers_its_teacher_and_reloads(
    tiny_student: Path, tiny_runs: dict[str, Path]
) -> None:
    manifest = read_manifest(tiny_student, stage="train")  # every sha256 checked
    details = manifest.details_as(TrainDetails)
    assert details.method == "distill"
    assert details.model.encoder_dir == "encoder" and details.model.adapter_dir is None
    info = details.distill
    assert info is not None
    assert (info.teacher_run, info.teacher_method) == ("t-lora", "lora")
    assert (info.layers, info.base_layers) == (1, 2)
    assert (info.temperature, info.alpha_kl, info.alpha_hard) == (2.0, 0.8, 0.2)
    teacher_manifest = read_manifest(tiny_runs["lora"])
    assert info.teacher_test_accuracy == teacher_manifest.metrics["test_accuracy"]
    assert [(i.role, i.path) for i in manifest.inputs] == [
        ("teacher_run", str(tiny_runs["lora"] / "manifest.json"))
    ]
    assert (
        json.loads((tiny_student / "encoder" / "config.json").read_text())["num_hidden_layers"] == 1
    )
    assert {"encoder/config.json", "encoder/model.safetensors"} <= set(manifest.artifacts)
    metrics = json.loads((tiny_student / "metrics.json").read_text())
    assert 0.0 <= metrics["teacher_test_agreement"] <= 1.0
    assert (tiny_student / "curves.png").is_file()
    log = json.loads((tiny_student / "training_log.json").read_text())
    assert any("eval_accuracy" in e for e in log)  # dev evaluations: early stopping works on it
    # the run rebuilds from its own files into the model that scored the test split
    ref = resolve_base_model(details.base_model.name)
    cfg = ModelConfig.model_validate(manifest.config["model"])
    model = load_trained(ref, cfg, 2, tiny_student, False, encoder_dir="encoder")
    assert len(model.encoder.encoder.layer) == 1
    rows = [json.loads(line) for line in (tiny_student / "test_predictions.jsonl").open()]
    assert [r["pred"] for r in rows] == [int(np.argmax(r["scores"])) for r in rows]


def test_student_starts_from_the_base_models_first_layers(tiny_bert: Path) -> None:
    from transformers import AutoModel

    ref = resolve_base_model(str(tiny_bert))
    student = build_student(ref, ModelConfig(base=str(tiny_bert)), DistillConfig(layers=1), 2)
    base = AutoModel.from_pretrained(str(tiny_bert))
    assert len(student.encoder.encoder.layer) == 1
    for name, value in student.encoder.encoder.layer[0].state_dict().items():
        assert torch.equal(value, base.encoder.layer[0].state_dict()[name]), name
    assert torch.equal(
        student.encoder.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight
    )
    assert all(p.requires_grad for p in student.parameters())  # fully fine-tuned
    frozen = build_student(
        ref,
        ModelConfig(base=str(tiny_bert)),
        DistillConfig(layers=1, freeze_word_embeddings=True),
        2,
    )
    assert [n for n, p in frozen.named_parameters() if not p.requires_grad] == [
        "encoder.embeddings.word_embeddings.weight"
    ]


def test_distill_loss_is_kl_times_t_squared_plus_hard_ce() -> None:
    teacher = np.array([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]], dtype=np.float32)
    student = torch.tensor([[0.1, 0.2], [1.0, -1.0], [0.0, 0.0]])
    labels = [0, 1, 1]
    cfg = DistillConfig(temperature=3.0, alpha_kl=0.7, alpha_hard=0.4)
    got = distill_loss(teacher, labels, cfg, torch.device("cpu"))(student, [0, 1, 2])
    t = torch.softmax(torch.from_numpy(teacher) / 3.0, -1)
    s = torch.log_softmax(student / 3.0, -1)
    kl = (t * (t.log() - s)).sum(-1) * 9.0
    ce = torch.nn.functional.cross_entropy(student, torch.tensor(labels), reduction="none")
    assert torch.allclose(got, 0.7 * kl + 0.4 * ce, atol=1e-6)
    # a student that already matches its teacher pays only the hard term
    same = distill_loss(teacher, labels, cfg, torch.device("cpu"))(
        torch.from_numpy(teacher[:1]), [0]
    )
    ce0 = torch.nn.functional.cross_entropy(torch.from_numpy(teacher[:1]), torch.tensor([0]))
    assert same.item() == pytest.approx(0.4 * ce0.item(), abs=1e-6)


def test_distill_config_rules() -> None:
    with pytest.raises(ConfigError, match="method distill needs a teacher: pass --teacher"):
        load_config(TrainingConfig, None, ["method=distill"])
    with pytest.raises(ConfigError, match="alpha_kl and distill.alpha_hard cannot both be 0"):
        load_config(TrainingConfig, None, ["distill.alpha_kl=0", "distill.alpha_hard=0"])
    with pytest.raises(ConfigError, match="distill.layers"):
        load_config(TrainingConfig, None, ["distill.layers=0"])


def test_student_refusals(
    tiny_runs: dict[str, Path],
    tiny_exports: dict[str, Path],
    tiny_bert: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    rows = make_sentences(120, seed=3)
    write_tsv(data / "train.tsv", rows[:80])
    write_tsv(data / "dev.tsv", rows[80:100])
    write_tsv(data / "test.tsv", rows[100:])
    out = tmp_path / "out"
    teacher = tiny_runs["lora"]

    def error(argv: list[str]) -> str:
        assert main(argv) == 1
        return capsys.readouterr().err

    # k must be fewer than the base model's 2 layers
    err = error(_student_argv(teacher, data, tiny_bert, out, "--set", "distill.layers=2"))
    assert "distill.layers must be between 1 and 1 (base model" in err and "got 2" in err
    # not a train run: a directory without a manifest, and an export run
    err = error(_student_argv(tmp_path, data, tiny_bert, out))
    assert f"the teacher {tmp_path} is not a finished train run" in err
    err = error(_student_argv(tiny_exports["lora"], data, tiny_bert, out))
    assert "is not a finished train run" in err and "expected a 'train' run" in err
    # a teacher of other labels
    other = tmp_path / "other"
    named = [(t, "Sports" if y else "World") for t, y in rows]
    write_tsv(other / "train.tsv", named[:80])
    write_tsv(other / "dev.tsv", named[80:100])
    write_tsv(other / "test.tsv", named[100:])
    err = error(_student_argv(teacher, other, tiny_bert, out))
    assert "the teacher t-lora was trained on labels ['0', '1']" in err
    assert "['Sports', 'World']" in err
    # --teacher without the distill method
    err = error(["train", "--method", "lora", "--teacher", str(teacher)])
    assert "--teacher is for --method distill, not method 'lora'" in err
    assert not (out / "train" / "x-distill").exists()
