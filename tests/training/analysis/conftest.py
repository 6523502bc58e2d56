"""A train run on a CSV with string labels (three topics), some texts past max_length."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

TOPICS = {"Sci/Tech": "w0 w1 w2 w3", "Sports": "w5 w6 w7 w8", "World": "w10 w11 w12 w13"}
FILLER = ["the", "film", "story", "was", "a", "and", "it", "is", "this", "very"]


def topic_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Texts carrying their topic in one or two cue words; one in five is long (30 words)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(sorted(TOPICS))
        words = rng.choices(FILLER, k=30 if i % 5 == 0 else rng.randint(2, 6))
        for cue in rng.sample(TOPICS[topic].split(), 2):
            words.insert(rng.randint(0, len(words)), cue)
        rows.append((" ".join(words), topic))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "topic"])
        writer.writerows(rows)


@pytest.fixture(scope="session")
def topic_runs(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, Path]:
    """`--method both` on the topic CSV: string labels, max_length 16 (long texts truncated)."""
    from training.config import TrainingConfig
    from training.run import run_train
    from tuneserve.config import load_config

    tmp = tmp_path_factory.mktemp("topics")
    rows = topic_rows(240, seed=5)
    for name, part in (("train", rows[:150]), ("dev", rows[150:190]), ("test", rows[190:])):
        write_csv(tmp / "data" / f"{name}.csv", part)
    overrides = [
        f"data.source={json.dumps(str(tmp / 'data'))}",
        'data.train="train.csv"',
        'data.dev="dev.csv"',
        'data.test="test.csv"',
        'data.text_column="review"',
        'data.label_column="topic"',
        f"model.base={json.dumps(str(tiny_bert))}",
        "model.max_length=16",
        "head.learning_rate=0.1",
        "head.epochs=3",
        "lora.learning_rate=0.01",
        "lora.epochs=3",
        "lora.r=4",
        "lora.init_b_nonzero=true",
        "train.batch_size=16",
        "train.evals_per_epoch=1",
        "train.patience=0",
        f"output.root={json.dumps(str(tmp / 'artifacts'))}",
        "method=both",
    ]
    head, lora = run_train(load_config(TrainingConfig, None, overrides), run_id="topics")
    return {"head": head, "lora": lora, "root": tmp}
