"""Shared fixtures: a tiny random BERT with its tokenizer on disk, and small crafted datasets."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# prometheus_client picks its storage when imported: the service's in-process tests need the
# multiprocess mode `bentoml serve` uses, so the directory is set before anything imports it.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tuneserve-prom-")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "sst2"

POSITIVE = ["good", "great", "lovely", "wonderful", "superb", "fine", "charming", "brilliant"]
NEGATIVE = ["bad", "awful", "boring", "dull", "terrible", "poor", "ugly", "tedious"]
NEUTRAL = [
    "the",
    "film",
    "movie",
    "was",
    "a",
    "story",
    "plot",
    "acting",
    "very",
    "quite",
    "and",
    "it",
    "is",
    "this",
    "really",
]


def make_sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences whose label is carried by one sentiment word among neutral ones."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(NEUTRAL, rng.randint(2, 6))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, object]], header: str = "sentence\tlabel") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT (hidden 32) and a word-level WordPiece tokenizer, saved to disk."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *POSITIVE,
        *NEGATIVE,
        *NEUTRAL,
        *[f"w{i}" for i in range(40)],
    ]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture
def sentiment_dir(tmp_path: Path) -> Path:
    """train/dev/test TSV files of crafted sentiment sentences."""
    data = tmp_path / "data"
    rows = make_sentences(260, seed=1)
    write_tsv(data / "train.tsv", rows[:160])
    write_tsv(data / "dev.tsv", rows[160:210])
    write_tsv(data / "test.tsv", rows[210:])
    return data


@pytest.fixture
def tiny_config_file(tmp_path: Path, tiny_bert: Path, sentiment_dir: Path) -> Path:
    """A TOML config for a quick run on the tiny model and crafted data."""
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
method = "lora"
[data]
source = "{sentiment_dir}"
label_names = {{ "0" = "negative", "1" = "positive" }}
[model]
base = "{tiny_bert}"
max_length = 32
[head]
learning_rate = 0.01
epochs = 4
[lora]
learning_rate = 0.01
epochs = 4
r = 4
alpha = 8
init_b_nonzero = true
[train]
batch_size = 16
evals_per_epoch = 1
log_every_steps = 2
patience = 0
[output]
root = "{tmp_path / "artifacts"}"
""")
    return path


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, Path]:
    """One `--method both` run on the tiny model, shared by every test that reads train runs."""
    tmp = tmp_path_factory.mktemp("both")
    data = tmp / "data"
    rows = make_sentences(300, seed=1)
    write_tsv(data / "train.tsv", rows[:200])
    write_tsv(data / "dev.tsv", rows[200:250])
    write_tsv(data / "test.tsv", rows[250:])
    overrides = [
        f"data.source={json.dumps(str(data))}",
        f"model.base={json.dumps(str(tiny_bert))}",
        "model.max_length=32",
        "head.learning_rate=0.1",
        "head.epochs=4",
        "lora.learning_rate=0.01",
        "lora.epochs=4",
        "lora.r=4",
        "lora.alpha=8",
        "lora.init_b_nonzero=true",
        "train.batch_size=16",
        "train.evals_per_epoch=1",
        "train.log_every_steps=2",
        "train.patience=0",
        f"output.root={json.dumps(str(tmp / 'artifacts'))}",
        'data.label_names={"0" = "negative", "1" = "positive"}',
    ]
    from training.config import TrainingConfig
    from training.run import run_train
    from tuneserve.config import load_config

    cfg = load_config(TrainingConfig, None, [*overrides, "method=both"])
    head, lora = run_train(cfg, run_id="t")
    return {"head": head, "lora": lora, "root": tmp / "artifacts"}


@pytest.fixture(scope="session")
def tiny_exports(
    tiny_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Exports of the tiny runs through the CLI: LoRA and head cpu-int8, LoRA cpu-fp32."""
    from tuneserve.cli import main

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for method, profile in (("lora", "cpu-int8"), ("head", "cpu-int8"), ("lora", "cpu-fp32")):
        argv = ["export", "--from", str(tiny_runs[method]), "--set", f'output_root="{root}"']
        code = main([*argv, "--profile", profile])
        assert code == 0, f"export of the tiny {method} run ({profile}) failed"
        out[f"{method}-{profile}"] = root / "export" / f"t-{method}-{profile}"
    out["lora"], out["head"] = out["lora-cpu-int8"], out["head-cpu-int8"]
    out["root"] = root
    return out


@pytest.fixture(scope="session")
def tiny_student(tiny_runs: dict[str, Path], tiny_bert: Path) -> Path:
    """A 1-layer student of the tiny LoRA run (`--method distill`), on the teacher's data."""
    from tuneserve.cli import main

    teacher = tiny_runs["lora"]
    root = tiny_runs["root"]
    data = json.loads((teacher / "manifest.json").read_text())["config"]["data"]["source"]
    argv = [
        "train", "--method", "distill", "--teacher", str(teacher), "--run-id", "s",
        "--set", f"data.source={json.dumps(data)}",
        "--set", f"model.base={json.dumps(str(tiny_bert))}",
        "--set", "model.max_length=32",
        "--set", 'data.label_names={"0" = "negative", "1" = "positive"}',
        "--set", "distill.layers=1", "--set", "distill.learning_rate=0.01",
        "--set", "distill.epochs=4", "--set", "train.batch_size=16",
        "--set", "train.evals_per_epoch=1", "--set", "train.log_every_steps=2",
        "--set", "train.patience=0", "--set", f"output.root={json.dumps(str(root))}",
    ]  # fmt: skip
    assert main(argv) == 0, "the tiny student did not train"
    return root / "train" / "s-distill"
