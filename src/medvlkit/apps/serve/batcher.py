"""Micro-batching: single items from concurrent requests are gathered into one forward pass.

A request awaits :meth:`MicroBatcher.submit`; one background task takes the first waiting item, then keeps
collecting until ``max_batch`` items are in hand or ``max_wait_ms`` have passed since that first item, and runs
the batch function on the one inference thread (the model is never called from two threads at once). While a batch
runs, new requests queue up, so under load batches fill by themselves and the wait is only paid when idle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BatchStats:
    """What the batcher has done, for ``/info`` and the load benchmark."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def add(self, n: int) -> None:
        self.batches += 1
        self.items += n
        self.largest = max(self.largest, n)
        self.sizes[n] = self.sizes.get(n, 0) + 1


class MicroBatcher:
    """Gathers items into batches for ``fn`` (a list of items -> an array with one row per item).

    Args:
        fn: the batch function; it runs on ``executor`` (one thread: the model's).
        executor: where ``fn`` runs.
        max_batch: the most items in one call of ``fn``.
        max_wait_ms: how long the first item of a batch waits for company.
    """

    def __init__(self, fn: Callable[[list], np.ndarray], executor: concurrent.futures.Executor,
                 max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch {max_batch} must be >= 1 and max_wait_ms {max_wait_ms} >= 0")
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, items: Sequence) -> np.ndarray:
        """The rows ``fn`` gives for ``items`` (in order), computed in batches shared with other requests."""
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(self._queue))
        assert self._queue is not None  # made with the task
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, fut in zip(items, futures):
            self._queue.put_nowait((item, fut))
        return np.stack(await asyncio.gather(*futures))

    async def close(self) -> None:
        """Stop the background task (pending items get an error)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self, queue: asyncio.Queue) -> None:
        loop, getter = asyncio.get_running_loop(), None
        try:
            while True:
                getter = getter or loop.create_task(queue.get())
                batch, getter = [await getter], None
                deadline = time.monotonic() + self.max_wait
                while len(batch) < self.max_batch:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    getter = loop.create_task(queue.get())  # not cancelled on timeout: no item is lost
                    done, _ = await asyncio.wait({getter}, timeout=left)
                    if not done:
                        break  # the pending getter starts the next batch
                    batch.append(getter.result())
                    getter = None
                await self._run_batch(loop, batch)
        finally:
            if getter is not None:
                getter.cancel()

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        batch = [(item, fut) for item, fut in batch if not fut.cancelled()]  # their clients went away
        if not batch:
            return
        try:
            rows = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in batch])
        except Exception as err:  # noqa: BLE001 - every waiter of this batch gets the error; the loop goes on
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        self.stats.add(len(batch))
        for row, (_, fut) in zip(rows, batch):
            if not fut.done():
                fut.set_result(row)
