"""Each bad input: one clear line on stderr, exit code 1, and no run directory left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import write_tsv
from tuneserve.cli import main


def _run(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(["train", "--config", str(config), "--run-id", "bad", *extra])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    artifacts = config.parent / "artifacts"
    leftovers = list((artifacts / "train").iterdir()) if (artifacts / "train").exists() else []
    assert leftovers == [], leftovers
    return lines[0]


def test_missing_data_file(
    tiny_config_file: Path, sentiment_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (sentiment_dir / "test.tsv").unlink()
    line = _run(tiny_config_file, capsys)
    assert "test split file" in line and "not found" in line


def test_missing_train_file(
    tiny_config_file: Path, sentiment_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (sentiment_dir / "train.tsv").unlink()
    line = _run(tiny_config_file, capsys)
    assert f"train split file {sentiment_dir / 'train.tsv'} not found: check data.source" in line


def test_missing_data_directory(
    tiny_config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _run(tiny_config_file, capsys, "--data", str(tmp_path / "nowhere"))
    assert "pass --data DIR" in line


def test_missing_column(tiny_config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _run(tiny_config_file, capsys, "--set", "data.text_column=review")
    assert "has no column 'review' (columns: sentence, label)" in line


def test_unknown_label_in_eval_split(
    tiny_config_file: Path, sentiment_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tsv(sentiment_dir / "dev.tsv", [("good film", 1), ("odd film", "neutral")])
    line = _run(tiny_config_file, capsys)
    assert "dev split has label 'neutral'" in line


def test_empty_after_cleaning(
    tiny_config_file: Path, sentiment_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tsv(sentiment_dir / "train.tsv", [("   ", 1), ("", 0)])
    line = _run(tiny_config_file, capsys)
    assert "empty after cleaning" in line


def test_base_model_not_a_sequence_classifier(
    tiny_config_file: Path, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import ViTConfig

    vision = tmp_path / "vit"
    shutil.copytree(tiny_bert, vision)
    ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    ).save_pretrained(vision)
    line = _run(tiny_config_file, capsys, "--set", f'model.base="{vision}"')
    assert "is a 'vit' model, which transformers cannot use as a sequence classifier" in line


def test_unreadable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora\nr = 8\n")
    line = _run(bad, capsys)
    assert "is unreadable" in line


def test_invalid_config_value(tiny_config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _run(tiny_config_file, capsys, "--set", "lora.r=0")
    assert "lora.r: r must be positive, got 0" in line


def test_existing_run_is_not_overwritten(
    tiny_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tiny_config_file.parent / "artifacts" / "train" / "bad-lora"
    run.mkdir(parents=True)
    (run / "keep.txt").write_text("mine")
    code = main(["train", "--config", str(tiny_config_file), "--run-id", "bad"])
    assert code == 1
    assert "already exists" in capsys.readouterr().err
    assert (run / "keep.txt").read_text() == "mine"


def test_interrupted_training_leaves_no_run(
    tiny_config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import training.run

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training.run, "plot_curves", interrupted)
    code = main(
        ["train", "--config", str(tiny_config_file), "--run-id", "bad", "--set", "lora.epochs=1"]
    )
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    train_root = tiny_config_file.parent / "artifacts" / "train"
    assert list(train_root.iterdir()) == []


def test_help_lists_stages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "train" in capsys.readouterr().out


def test_sigterm_during_training_leaves_no_run(tiny_config_file: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneserve.cli",
            "train",
            "--config",
            str(tiny_config_file),
            "--run-id",
            "term",
            "--set",
            "lora.epochs=500",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    train_root = tiny_config_file.parent / "artifacts" / "train"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (train_root.exists() and any(train_root.iterdir())):
        time.sleep(0.2)
    assert train_root.exists() and any(train_root.iterdir()), "training never started"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert list(train_root.iterdir()) == []
