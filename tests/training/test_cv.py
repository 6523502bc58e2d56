from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import make_sentences, write_tsv
from training.checks import CheckedData, Split
from training.cv import check_folds, stratified_folds
from tuneserve.cli import main
from tuneserve.details import CVDetails, TrainDetails
from tuneserve.errors import ConfigError, DataError
from tuneserve.manifest import read_manifest

NAMES = {0: "Sci/Tech", 1: "Sports"}


def _labelled(n: int, seed: int) -> list[tuple[str, object]]:
    """``n`` distinct sentences with string labels (no duplicates: cleaning keeps every row)."""
    unique = dict(make_sentences(4 * n, seed))
    return [(t, NAMES[y]) for t, y in list(unique.items())[:n]]


def _assert_stratified_partition(folds: list[list[int]], labels: list[int], k: int) -> None:
    flat = [i for fold in folds for i in fold]
    assert len(folds) == k
    assert sorted(flat) == list(range(len(labels)))  # disjoint and covering
    for label, total in Counter(labels).items():
        per_fold = [sum(labels[i] == label for i in fold) for fold in folds]
        assert sum(per_fold) == total and max(per_fold) - min(per_fold) <= 1, per_fold
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_stratified_disjoint_covering_and_seeded(k: int) -> None:
    labels = [0] * 17 + [1] * 9 + [2] * 5
    folds = stratified_folds(labels, k, seed=7)
    _assert_stratified_partition(folds, labels, k)
    assert stratified_folds(labels, k, seed=7) == folds
    assert stratified_folds(labels, k, seed=8) != folds


def test_fold_count_is_checked() -> None:
    def data(labels: list[int]) -> CheckedData:
        split = Split("train", [str(i) for i in labels], labels)
        return CheckedData(split, split, split, ["a", "b"], {0: "a", 1: "b"})

    with pytest.raises(ConfigError, match="--cv must be at least 2 folds, got 1"):
        check_folds(1, data([0, 0, 1, 1]))
    with pytest.raises(DataError, match="--cv 4 needs at least 4 train examples of every class, "
                       "but class 'b' has 3: use --cv 3 or fewer"):  # fmt: skip
        check_folds(4, data([0] * 5 + [1] * 3))
    with pytest.raises(DataError, match="class 'b' has 1: add examples of it"):
        check_folds(2, data([0] * 5 + [1]))
    check_folds(3, data([0] * 5 + [1] * 3))


@pytest.fixture(scope="module")
def cv_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cv") / "data"
    rows = _labelled(150, seed=5)
    write_tsv(data / "train.tsv", rows[:90])
    write_tsv(data / "dev.tsv", rows[90:120])
    write_tsv(data / "test.tsv", rows[120:])
    return data


def _cv_argv(data: Path, tiny_bert: Path, out: Path, run_id: str, *extra: str) -> list[str]:
    return [
        "train", "--cv", "3", "--run-id", run_id,
        "--set", f"data.source={json.dumps(str(data))}",
        "--set", f"model.base={json.dumps(str(tiny_bert))}",
        "--set", "model.max_length=32", "--set", "head.epochs=2", "--set", "lora.epochs=1",
        "--set", "lora.r=2", "--set", "train.batch_size=32", "--set", "train.evals_per_epoch=1",
        "--set", f"output.root={json.dumps(str(out))}", *extra,
    ]  # fmt: skip


def test_cv_with_string_labels_writes_folds_summary_and_runs(
    cv_data: Path, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main([*_cv_argv(cv_data, tiny_bert, out, "a"), "--method", "both"]) == 0
    printed = capsys.readouterr().out
    assert "cross-validation of head: 3 stratified folds, seed 42" in printed
    assert "held-out accuracy" in printed and "held-out F1 Sci/Tech" in printed
    for method in ("head", "lora"):
        run = out / "train" / f"a-{method}-cv3"
        manifest = read_manifest(run, stage="cv")  # hashes of cv.json and each fold manifest
        details = manifest.details_as(CVDetails)
        assert (details.method, details.folds, details.seed) == (method, 3, 42)
        assert details.fold_runs == [f"a-{method}-cv3-fold{i}" for i in (1, 2, 3)]
        cv = json.loads((run / "cv.json").read_text())
        assert cv["fold_runs"] == details.fold_runs and cv["folds"] == 3
        # the folds split train: disjoint, covering, each label's share to within one
        folds = json.loads((run / "folds.json").read_text())["train_indices_heldout"]
        first = read_manifest(run / details.fold_runs[0], stage="train")
        raw = first.details_as(TrainDetails).raw_labels
        assert raw == ["Sci/Tech", "Sports"]
        kept = json.loads((run / details.fold_runs[0] / "data_report.json").read_text())
        labels = _cleaned_train_labels(cv_data, raw)
        assert details.train_examples == len(labels) == 90
        _assert_stratified_partition(folds, labels, 3)
        assert kept["cv"]["heldout_rows"] == len(folds[0])
        assert kept["cv"]["train_rows"] == 90 - len(folds[0])
        heldouts = []
        for fold_id, held in zip(details.fold_runs, folds, strict=True):
            metrics = json.loads((run / fold_id / "metrics.json").read_text())
            assert metrics["heldout"]["examples"] == len(held)
            assert metrics["test"]["examples"] == 30  # the test split is evaluated too
            heldouts.append(metrics["heldout"]["accuracy"])
        summary = cv["summary"]["heldout"]["accuracy"]
        assert summary["folds"] == heldouts
        assert summary["mean"] == pytest.approx(sum(heldouts) / 3)
        assert manifest.metrics["cv_accuracy_mean"] == pytest.approx(summary["mean"])
        assert "± " in (run / "cv.md").read_text()
    # seeded: the same command gives the same folds and figures
    assert main([*_cv_argv(cv_data, tiny_bert, out, "b"), "--method", "head"]) == 0
    again = json.loads((out / "train" / "b-head-cv3" / "cv.json").read_text())
    first_cv = json.loads((out / "train" / "a-head-cv3" / "cv.json").read_text())
    assert again["summary"] == first_cv["summary"]
    assert (out / "train" / "b-head-cv3" / "folds.json").read_text() == (
        out / "train" / "a-head-cv3" / "folds.json"
    ).read_text()


def _cleaned_train_labels(data: Path, raw: list[str]) -> list[int]:
    lines = (data / "train.tsv").read_text().splitlines()[1:]
    return [raw.index(line.split("\t")[1]) for line in lines]


def test_cv_of_a_student_distils_every_fold_from_the_teacher(
    tiny_runs: dict[str, Path], tiny_bert: Path, tmp_path: Path
) -> None:
    teacher = tiny_runs["lora"]
    data = json.loads((teacher / "manifest.json").read_text())["config"]["data"]["source"]
    out = tmp_path / "out"
    argv = [
        "train", "--cv", "2", "--method", "distill", "--teacher", str(teacher), "--run-id", "d",
        "--set", f"data.source={json.dumps(data)}",
        "--set", f"model.base={json.dumps(str(tiny_bert))}", "--set", "model.max_length=32",
        "--set", "distill.layers=1", "--set", "distill.epochs=1",
        "--set", f"output.root={json.dumps(str(out))}",
    ]  # fmt: skip
    assert main(argv) == 0
    run = out / "train" / "d-distill-cv2"
    manifest = read_manifest(run, stage="cv")
    assert [i.role for i in manifest.inputs] == ["teacher_run"]
    for fold_id in manifest.details_as(CVDetails).fold_runs:
        fold = read_manifest(run / fold_id, stage="train").details_as(TrainDetails)
        assert fold.method == "distill" and fold.distill is not None
        assert fold.distill.teacher_run == "t-lora"


def test_cv_refusals(
    cv_data: Path, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    base = _cv_argv(cv_data, tiny_bert, out, "r")
    assert main([*base, "--nproc", "2"]) == 1
    assert "--cv trains its folds in one process: drop --nproc" in capsys.readouterr().err
    assert main([*base[:1], "--cv", "1", *base[3:]]) == 1
    assert "--cv must be at least 2 folds, got 1" in capsys.readouterr().err
    assert main([*base[:1], "--cv", "80", *base[3:]]) == 1
    assert "--cv 80 needs at least 80 train examples of every class" in capsys.readouterr().err
    assert not (out / "train").exists() or not any((out / "train").iterdir())
