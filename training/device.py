"""Where and how fast a run trains: the device and precision, the seeds, speed and memory."""

from __future__ import annotations

import logging
import random
import resource
from typing import Any

import numpy as np
import torch

from training.config import TrainingConfig
from training.distributed import SINGLE, World
from training.loop import TrainResult

log = logging.getLogger(__name__)


def choose_device(cfg: TrainingConfig, world: World = SINGLE) -> tuple[torch.device, str]:
    """The device and precision to train with (with several ranks: this rank's GPU)."""
    want = cfg.train.device
    cuda = torch.cuda.is_available()
    if want == "cuda" and not cuda:
        log.warning("train.device is cuda but no GPU is visible: training on the CPU")
    device = torch.device("cuda" if cuda and want != "cpu" else "cpu")
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    precision = cfg.train.precision
    if precision == "auto":
        precision = (
            ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
            if device.type == "cuda"
            else "fp32"
        )
    return device, precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU when used)."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def speed_figures(
    result: TrainResult, device: torch.device, precision: str, world: World = SINGLE
) -> dict[str, Any]:
    """How long training took, how fast it went and how much memory it needed (rank 0's
    memory; examples and steps are global)."""
    train_only = max(result.seconds - result.eval_seconds, 1e-9)
    return {
        "wall_seconds": round(result.seconds, 2),
        "dev_eval_seconds": round(result.eval_seconds, 2),
        "examples_seen": result.examples_seen,
        "examples_per_second": round(result.examples_seen / train_only, 2),
        "steps_per_second": round(result.steps / train_only, 3),
        "steps": result.steps,
        "world_size": world.size,
        "backend": world.backend,
        "stopped_early": result.stopped_early,
        "best_step": result.best_step,
        "device": str(device),
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        **peak_memory_mb(device),
    }
