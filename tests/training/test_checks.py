from __future__ import annotations

import pytest

from training.checks import check_data, clean_split, label_key, stratified_holdout
from training.config import DataConfig
from tuneserve.data import RawSplit
from tuneserve.errors import DataError


def words(texts: list[str]) -> list[int]:
    return [len(t.split()) + 2 for t in texts]  # +2 for the special tokens


def raw(name: str, rows: list[tuple[object, object]]) -> RawSplit:
    return RawSplit(name, [t for t, _ in rows], [lab for _, lab in rows], f"{name}.tsv")


TRAIN = [("good film", 1), ("bad film", 0), ("great", 1), ("awful", 0), ("fine", 1), ("dull", 0)]


def test_cleaning_counts_every_problem() -> None:
    rows = [
        ("good", 1),
        ("  ", 0),
        ("", 1),
        (None, 1),
        ("good", 1),
        ("mixed", 1),
        ("mixed", 0),
        ("mixed", 0),
        ("nolabel", ""),
        ("bad", 0),
    ]
    texts, keys, stats = clean_split(raw("train", rows))
    assert texts == ["good", "bad"]
    assert keys == ["1", "0"]
    assert stats["rows_read"] == 10
    assert stats["empty_dropped"] == 3
    assert stats["missing_label_dropped"] == 1
    assert stats["duplicates_dropped"] == 1
    assert stats["conflicting_texts"] == 1
    assert stats["conflicting_rows_dropped"] == 3
    assert stats["conflict_examples"] == [{"text": "mixed", "labels": ["0", "1"]}]


def test_label_keys_normalise() -> None:
    assert label_key(1) == label_key("1") == label_key(" 1 ") == label_key(1.0) == "1"
    assert label_key("Sci/Tech") == "Sci/Tech"
    assert label_key("") is None
    assert label_key(None) is None


def test_report_lengths_balance_and_leakage() -> None:
    cfg = DataConfig(imbalance_ratio=1.5, label_names={"0": "neg", "1": "pos"})
    train = raw("train", [*TRAIN, ("good", 1), ("nice", 1), ("a very long text indeed here", 1)])
    dev = raw("dev", [("good film", 1), ("meh", 0)])
    test = raw("test", [("great", 1), ("poor", 0)])
    data = check_data(cfg, train, dev, test, words, max_length=5, seed=0)
    rep = data.report
    assert data.id2label == {0: "neg", 1: "pos"}
    assert rep["splits"]["train"]["label_counts"] == {"neg": 3, "pos": 6}
    assert rep["splits"]["train"]["longer_than_max_length"] == 1
    assert rep["leakage"] == {
        "train_dev": 1,
        "train_test": 1,
        "dev_test": 0,
        "dropped_from_train": 0,
    }
    assert any("imbalance 2.00:1" in w for w in rep["warnings"])
    assert any("leakage: 1 texts occur in both train and dev" in w for w in rep["warnings"])
    assert len(data.train) == 9

    dropped = check_data(DataConfig(drop_leaked=True), train, dev, test, words, 5, 0)
    assert dropped.report["leakage"]["dropped_from_train"] == 2
    assert "good film" not in dropped.train.texts and "great" not in dropped.train.texts


def test_string_labels_and_label_map() -> None:
    rows = [("a", "World"), ("b", "Sci/Tech"), ("c", "Sports"), ("d", "World")]
    data = check_data(
        DataConfig(), raw("train", rows), raw("dev", rows[:2]), raw("test", rows[1:3]), words, 16, 0
    )
    assert data.id2label == {0: "Sci/Tech", 1: "Sports", 2: "World"}
    assert data.train.labels == [2, 0, 1, 2]


def test_stratified_holdout_without_dev() -> None:
    texts = [f"t{i}" for i in range(100)]
    keys = ["0"] * 80 + ["1"] * 20
    (kept_t, _), (held_t, held_k) = stratified_holdout(texts, keys, 0.1, seed=3)
    assert held_k.count("0") == 8 and held_k.count("1") == 2
    assert not set(kept_t) & set(held_t)
    again = stratified_holdout(texts, keys, 0.1, seed=3)
    assert again[1][0] == held_t  # fixed seed, same split
    data = check_data(
        DataConfig(dev_fraction=0.25),
        raw("train", TRAIN * 1),
        None,
        raw("test", TRAIN[:2]),
        words,
        16,
        0,
    )
    assert "held out from train" in data.report["dev_source"]
    assert len(data.dev) + len(data.train) == len(TRAIN)


def test_unknown_label_in_eval_split() -> None:
    with pytest.raises(
        DataError,
        match=r"test split has label '7' \(1 rows\) that the train split"
        r" lacks \(train labels: 0, 1\)",
    ):
        check_data(
            DataConfig(),
            raw("train", TRAIN),
            raw("dev", TRAIN[:2]),
            raw("test", [("x", 7), ("y", 1)]),
            words,
            16,
            0,
        )


def test_empty_after_cleaning() -> None:
    with pytest.raises(DataError, match="train split train.tsv is empty after cleaning"):
        check_data(
            DataConfig(),
            raw("train", [(" ", 1), ("", 0)]),
            raw("dev", TRAIN[:2]),
            raw("test", TRAIN[:2]),
            words,
            16,
            0,
        )
    with pytest.raises(DataError, match="dev split is empty after cleaning"):
        check_data(
            DataConfig(),
            raw("train", TRAIN),
            raw("dev", [("\t", 1)]),
            raw("test", TRAIN[:2]),
            words,
            16,
            0,
        )


def test_single_label_is_refused() -> None:
    with pytest.raises(DataError, match="single label"):
        check_data(
            DataConfig(),
            raw("train", [("a", 1), ("b", 1)]),
            raw("dev", [("a", 1)]),
            raw("test", [("b", 1)]),
            words,
            16,
            0,
        )


def test_subsets_are_seeded() -> None:
    many = [(f"text {i}", i % 2) for i in range(50)]
    cfg = DataConfig(max_train_examples=10)
    a = check_data(
        cfg, raw("train", many), raw("dev", many[:4]), raw("test", many[:4]), words, 16, 1
    )
    b = check_data(
        cfg, raw("train", many), raw("dev", many[:4]), raw("test", many[:4]), words, 16, 1
    )
    assert len(a.train) == 10 and a.train.texts == b.train.texts
    assert a.report["splits"]["train"]["subset_to"] == 10
