"""Data-parallel training: batch shards, a 2-process run equal to one process, a failing rank."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import make_sentences, write_tsv
from training.distributed import World, loss_scale, shard, without_nproc
from tuneserve.cli import main
from tuneserve.details import TrainDetails
from tuneserve.manifest import read_manifest

# Largest difference allowed between the weights of a 2-process and a 1-process run. Only the
# order of float additions differs (the gradient all-reduce, per-share sums): measured ~1e-7 here.
WEIGHT_ATOL = 1e-5


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 2, 5, 15, 16])
def test_shards_cover_each_batch_once_in_near_equal_parts(size: int, batch: int) -> None:
    items = list(range(100, 100 + batch))
    parts = [shard(items, World(rank=r, size=size)) for r in range(size)]
    assert [i for part in parts for i in part] == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("batch", [3, 7, 2])
def test_averaged_share_gradients_equal_the_whole_batch_gradient(size: int, batch: int) -> None:
    """What DDP computes (the mean over ranks of each share's scaled loss gradient) equals the
    gradient of the batch mean in one process, for uneven and empty shares too."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x, y = torch.randn(batch, 4), torch.randint(0, 3, (batch,))

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return [g.clone() for g in torch.autograd.grad(loss, list(layer.parameters()))]

    whole = grads(torch.nn.functional.cross_entropy(layer(x), y))
    averaged = [torch.zeros_like(g) for g in whole]
    for rank in range(size):
        world = World(rank=rank, size=size)
        idx = shard(list(range(batch)), world)
        weight = loss_scale(batch, world) if idx else 0.0
        idx = idx or [0]
        loss = torch.nn.functional.cross_entropy(layer(x[idx]), y[idx], reduction="sum") * weight
        for total, g in zip(averaged, grads(loss), strict=True):
            total += g / size
    for a, b in zip(averaged, whole, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_ranks_rerun_the_command_without_nproc() -> None:
    argv = ["-v", "train", "--nproc", "2", "--config", "c.toml", "--nproc=3", "--method", "lora"]
    assert without_nproc(argv) == ["-v", "train", "--config", "c.toml", "--method", "lora"]


def test_nproc_below_one_is_refused(
    tiny_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--config", str(tiny_config_file), "--nproc", "0"]) == 1
    assert "error: --nproc must be at least 1, got 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ddp_config(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without dropout (so one and two processes draw no random masks) and a
    config whose batch of 15 splits 8 + 7 over two ranks, with an uneven last batch too."""
    root = tmp_path_factory.mktemp("ddp")
    model = root / "bert"
    shutil.copytree(tiny_bert, model)
    config = json.loads((model / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (model / "config.json").write_text(json.dumps(config))
    rows = make_sentences(260, seed=3)
    write_tsv(root / "data" / "train.tsv", rows[:163])
    write_tsv(root / "data" / "dev.tsv", rows[163:213])
    write_tsv(root / "data" / "test.tsv", rows[213:])
    path = root / "ddp.toml"
    path.write_text(f"""
method = "both"
[data]
source = "{root / "data"}"
label_names = {{ "0" = "negative", "1" = "positive" }}
[model]
base = "{model}"
max_length = 32
classifier_dropout = 0.0
[head]
learning_rate = 0.05
epochs = 2
[lora]
learning_rate = 0.01
epochs = 2
r = 4
alpha = 8
dropout = 0.0
init_b_nonzero = true
[train]
batch_size = 15
evals_per_epoch = 2
log_every_steps = 3
patience = 0
[output]
root = "{root / "artifacts"}"
""")
    return path


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_two_processes_train_the_same_weights_as_one(
    ddp_config: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--config", str(ddp_config)]
    assert main([*base, "--run-id", "one"]) == 0
    assert main([*base, "--run-id", "two", "--nproc", "2"]) == 0, capfd.readouterr().err
    # the tolerance tells a different global batch apart: 16 instead of 15 moves the weights
    other = ["--run-id", "b16", "--method", "head", "--set", "train.batch_size=16"]
    assert main([*base, *other]) == 0
    artifacts = ddp_config.parent / "artifacts"
    # one directory per method and run, nothing per rank, no unfinished staging left
    b16 = _tensors(artifacts / "train" / "b16-head" / "head.safetensors")["weight"]
    b15 = _tensors(artifacts / "train" / "one-head" / "head.safetensors")["weight"]
    assert float((b16 - b15).abs().max()) > 100 * WEIGHT_ATOL
    shutil.rmtree(artifacts / "train" / "b16-head")
    assert sorted(p.name for p in (artifacts / "train").iterdir()) == [
        "one-head",
        "one-lora",
        "two-head",
        "two-lora",
    ]
    assert sorted(p.name for p in (artifacts / "compare").iterdir()) == ["one", "two"]
    for method in ("head", "lora"):
        one, two = artifacts / "train" / f"one-{method}", artifacts / "train" / f"two-{method}"
        files = ["head.safetensors"]
        if method == "lora":
            files.append("adapter/adapter_model.safetensors")
        for name in files:
            a, b = _tensors(one / name), _tensors(two / name)
            assert a.keys() == b.keys() and a
            worst = max(float((a[k] - b[k]).abs().max()) for k in a)
            print(f"{method} {name}: largest weight difference {worst:.2e}")
            assert worst <= WEIGHT_ATOL, (method, name, worst)
        log_one = json.loads((one / "training_log.json").read_text())
        log_two = json.loads((two / "training_log.json").read_text())
        assert [e["step"] for e in log_one] == [e["step"] for e in log_two]
        for a, b in zip(log_one, log_two, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (method, key, a, b)
        m_one, m_two = read_manifest(one, stage="train"), read_manifest(two, stage="train")
        p_one, p_two = (
            m_one.details_as(TrainDetails).parallel,
            m_two.details_as(TrainDetails).parallel,
        )
        assert (p_one.world_size, p_one.backend) == (1, "none")
        assert (p_two.world_size, p_two.backend) == (2, "gloo")
        assert p_one.global_batch_size == p_two.global_batch_size == 15
        assert p_two.per_rank_batch_size == 8
        speed_one = json.loads((one / "metrics.json").read_text())["training"]
        speed_two = json.loads((two / "metrics.json").read_text())["training"]
        assert (speed_one["world_size"], speed_two["world_size"]) == (1, 2)
        for key in ("steps", "examples_seen", "best_step", "stopped_early"):
            assert speed_one[key] == speed_two[key], key
        assert (two / "curves.png").stat().st_size > 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_a_killed_rank_ends_every_rank_with_a_clear_error(ddp_config: Path, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    cmd = [sys.executable, "-m", "tuneserve.cli", "train", "--config", str(ddp_config)]
    cmd += ["--method", "lora", "--run-id", "dies", "--nproc", "2"]
    cmd += ["--set", "lora.epochs=200", "--set", f'output.root="{root}"']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        victim, ranks = None, {}
        while time.monotonic() < deadline and proc.poll() is None:
            staging = list((root / "train").glob(".dies-lora.*")) if root.exists() else []
            ranks = {_rank_of(pid): pid for pid in _children(proc.pid)}
            if staging and 1 in ranks:  # rank 0 is training into its staging directory
                victim = ranks[1]
                break
            time.sleep(0.2)
        assert victim is not None, proc.communicate(timeout=60)
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last == (
        "error: training rank 1 of 2 failed (killed by SIGKILL); every rank was stopped and the "
        "unfinished run directory was removed"
    ), err
    assert list((root / "train").iterdir()) == []
    time.sleep(0.5)
    assert [pid for pid in ranks.values() if Path(f"/proc/{pid}").exists()] == []


def test_an_error_on_rank_zero_alone_ends_every_rank(
    ddp_config: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Rank 0 refuses to replace an existing run; rank 1, waiting for it, is stopped too."""
    root = tmp_path / "artifacts"
    existing = root / "train" / "taken-head"
    existing.mkdir(parents=True)
    argv = ["train", "--config", str(ddp_config), "--method", "head", "--run-id", "taken"]
    code = main([*argv, "--nproc", "2", "--set", f'output.root="{root}"'])
    err = capfd.readouterr().err
    assert code == 1, err
    assert f"error: {existing} already exists: pass another --run-id" in err
    assert err.strip().splitlines()[-1] == (
        "error: training rank 0 of 2 failed (exit code 1, its error is printed above); every "
        "rank was stopped and the unfinished run directory was removed"
    )
    assert "Traceback" not in err, err
    assert [p.name for p in (root / "train").iterdir()] == ["taken-head"]


def test_train_details_without_parallel_read_as_one_process(tiny_runs: dict[str, Path]) -> None:
    """Runs written before multi-process training have no `parallel` block: one process."""
    raw = json.loads((tiny_runs["lora"] / "manifest.json").read_text())["details"]
    assert raw["parallel"] == {
        "world_size": 1,
        "backend": "none",
        "global_batch_size": 16,
        "per_rank_batch_size": 16,
    }
    del raw["parallel"]
    old = TrainDetails.model_validate(raw).parallel
    assert (old.world_size, old.backend, old.global_batch_size) == (1, "none", None)
