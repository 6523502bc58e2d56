"""Data-parallel training on torch.distributed: the process group, batch shards, the launcher."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from tuneserve.errors import RunError

log = logging.getLogger(__name__)

#: how long a rank waits in a collective for the others (rank 0 evaluates dev meanwhile)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that evaluates, decides early stopping and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def world_from_env() -> World:
    """The world torchrun (or `tuneserve train --nproc`) describes in the environment."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(
        rank=int(os.environ["RANK"]),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        backend="nccl" if torch.cuda.is_available() else "gloo",
    )


def init_world(want_device: str) -> World:
    """Join the process group when launched with several processes: NCCL with CUDA, else gloo."""
    world = world_from_env()
    if not world.distributed:
        return world
    if world.backend == "nccl" and want_device == "cpu":
        world = World(world.rank, world.size, world.local_rank, world.local_size, "gloo")
    if not torch.distributed.is_initialized():
        if world.backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        torch.distributed.init_process_group(world.backend, timeout=COLLECTIVE_TIMEOUT)
    if not world.is_main:  # warnings and info would repeat once per rank; errors still show
        logging.getLogger().setLevel(logging.ERROR)
    return world


def close_world(world: World) -> None:
    """Leave the process group (every rank reaches this once its work is done)."""
    if world.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@contextmanager
def rank_errors(world: World) -> Iterator[None]:
    """A collective that fails because another rank died becomes one clear line on this rank."""
    try:
        yield
    except RuntimeError as exc:
        if not world.distributed or not _lost_peer(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"rank {world.rank} of {world.size} lost the other ranks ({first}): another rank "
            "failed or was stopped"
        ) from exc


def _lost_peer(exc: RuntimeError) -> bool:
    """A collective's failure because a peer went away (gloo names the closed connection)."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    text = str(exc)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer"))


def threads_per_process(world: World) -> int:
    """The CPU cores of this machine shared among the processes on it (at least 1)."""
    return max(1, (os.cpu_count() or 1) // world.local_size)


def shard(batch: Sequence[int], world: World) -> list[int]:
    """This rank's share of a global batch: contiguous, sizes differing by at most one.

    The loss of a share is scaled by ``world.size / len(batch)`` (see ``loss_scale``), so the
    gradients DDP averages equal those of the whole batch in one process, even when the batch
    does not divide evenly (the last batch of an epoch) or a rank's share is empty.
    """
    base, extra = divmod(len(batch), world.size)
    start = world.rank * base + min(world.rank, extra)
    return list(batch[start : start + base + (1 if world.rank < extra else 0)])


def loss_scale(global_batch: int, world: World) -> float:
    """The factor that turns a share's summed loss into its part of the global mean."""
    return world.size / global_batch


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the trainable parameters; the model itself in one process."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # no batch norm anywhere, so buffers need no broadcast; every trainable parameter is used
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def sum_over_ranks(values: Sequence[float], world: World) -> list[float]:
    """Element-wise sum over every rank (the values themselves in one process)."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_comm_device(world))
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def flag_from_main(flag: bool, world: World) -> bool:
    """Rank 0's decision (e.g. stop early), the same on every rank."""
    if not world.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_comm_device(world))
    torch.distributed.broadcast(tensor, src=0)
    return bool(tensor.item())


def run_id_from_main(run_id: str, world: World) -> str:
    """Rank 0's run id on every rank (a default id is the clock, which ranks read apart)."""
    if not world.distributed:
        return run_id
    box = [run_id]
    torch.distributed.broadcast_object_list(box, src=0)
    return str(box[0])


def _comm_device(world: World) -> torch.device:
    return (
        torch.device("cuda", world.local_rank) if world.backend == "nccl" else torch.device("cpu")
    )


def launch(nproc: int, argv: Sequence[str]) -> None:
    """Run ``tuneserve ARGV`` as ``nproc`` processes on this machine, as torchrun does.

    The elastic agent behind torchrun starts the ranks (``python -m tuneserve.cli ARGV`` with
    RANK, WORLD_SIZE, MASTER_ADDR ... set), watches them, and stops every rank as soon as one
    fails; that failure becomes one RunError naming the rank.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "WORLD_SIZE" in os.environ:
        raise RunError(
            "--nproc was given inside a torchrun launch (WORLD_SIZE is set): drop --nproc, "
            "torchrun already starts one process per rank"
        )
    logs = tempfile.mkdtemp(prefix="tuneserve-ranks-")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port on this machine
        max_restarts=0,
        monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(log_dir=logs),
    )
    threads = os.environ.get("OMP_NUM_THREADS")  # the ranks inherit the environment
    os.environ["OMP_NUM_THREADS"] = threads or str(max(1, (os.cpu_count() or 1) // nproc))
    log.info("launching %d training processes", nproc)
    try:
        elastic_launch(config, sys.executable)("-m", "tuneserve.cli", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = (
            f"exit code {failure.exitcode}, its error is printed above"
            if failure.exitcode >= 0
            else f"killed by {_signal_name(-failure.exitcode)}"
        )
        raise RunError(
            f"training rank {rank} of {nproc} failed ({how}); every rank was stopped and the "
            "unfinished run directory was removed"
        ) from None
    finally:
        shutil.rmtree(logs, ignore_errors=True)
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]


def without_nproc(argv: Sequence[str]) -> list[str]:
    """The command line each rank runs: the same, without ``--nproc N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
