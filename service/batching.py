"""Running a variant's model off the event loop: alone per request, or adaptively batched.

``DirectRunner`` runs each request's texts in a worker thread. ``AdaptiveBatcher`` queues texts of
concurrent requests and runs whatever queued while the model was busy as one batch padded to its
longest text (up to ``max_batch_size``, optionally waiting ``max_latency_ms`` for it to fill), then
hands each caller its own rows. Under light load a batch is one request, so latency stays that of
an unbatched call; under heavy load batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service import metrics
from service.model import VariantModel


class Runner(Protocol):
    """Turns tokenised texts into class probabilities, one row per text, in order."""

    async def run(self, encodings: list[Any]) -> np.ndarray: ...

    async def close(self) -> None: ...

    def retire(self) -> None:
        """Stop once its requests are done (a hot swap replaced it); safe from any thread."""


class _Timed:
    """A variant's model call, timed and counted (the metrics' children looked up once)."""

    def __init__(self, model: VariantModel, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self.queue_wait = metrics.QUEUE_WAIT_SECONDS.labels(variant=model.name)
        self.inference = metrics.INFERENCE_SECONDS.labels(variant=model.name)
        self.batch = metrics.BATCH_SIZE.labels(variant=model.name)

    def __call__(self, encodings: list[Any]) -> np.ndarray:
        start = time.perf_counter()
        probs = self.model.infer_sorted(encodings, self.batch_size)
        self.inference.observe(time.perf_counter() - start)
        self.batch.observe(float(len(encodings)))
        return probs


class DirectRunner:
    """Each request runs alone in the executor (padded only to its own longest text)."""

    def __init__(self, model: VariantModel, executor: Executor, max_batch_size: int) -> None:
        self.model = model
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.timed = _Timed(model, max_batch_size)

    async def run(self, encodings: list[Any]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        queued = time.perf_counter()

        def job() -> np.ndarray:
            self.timed.queue_wait.observe(time.perf_counter() - queued)
            return self.timed(encodings)

        return await loop.run_in_executor(self.executor, job)

    async def close(self) -> None:
        return None

    def retire(self) -> None:
        return None


@dataclass
class _Item:
    encoding: Any
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)


class AdaptiveBatcher:
    """Batches texts of concurrent requests for one variant; one model call at a time."""

    def __init__(
        self,
        model: VariantModel,
        executor: Executor,
        max_batch_size: int,
        max_latency_ms: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.model = model
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_latency_ms / 1000.0
        self.clock = clock
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.timed = _Timed(model, max_batch_size)

    async def run(self, encodings: list[Any]) -> np.ndarray:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        loop = asyncio.get_running_loop()
        items = [_Item(e, loop.create_future()) for e in encodings]
        for item in items:
            self.queue.put_nowait(item)
        try:
            rows = await asyncio.gather(*(i.future for i in items))
        except asyncio.CancelledError:
            for item in items:  # a caller past its deadline: its rows need not be computed
                item.future.cancel()
            raise
        return np.stack(rows)

    async def _collect(self) -> list[_Item]:
        batch = [await self.queue.get()]
        deadline = self.clock() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return [item for item in batch if not item.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            now = self.clock()
            for item in batch:
                self.timed.queue_wait.observe(now - item.queued_at)
            encodings = [item.encoding for item in batch]
            try:
                probs = await loop.run_in_executor(self.executor, self.timed, encodings)
            except Exception as exc:  # hand the failure to every caller of the batch
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, row in zip(batch, probs, strict=True):
                if not item.future.done():
                    item.future.set_result(row)

    def retire(self) -> None:
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # its loop already closed: nothing runs
                task.get_loop().call_soon_threadsafe(task.cancel)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def make_runner(
    mode: str, model: VariantModel, executor: Executor, max_batch_size: int, max_latency_ms: float
) -> Runner:
    """The runner for a batching mode (``adaptive`` or ``off``)."""
    if mode == "adaptive":
        return AdaptiveBatcher(model, executor, max_batch_size, max_latency_ms)
    return DirectRunner(model, executor, max_batch_size)
