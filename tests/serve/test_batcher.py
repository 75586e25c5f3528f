"""The micro-batcher on its own: order, batching, errors, and the memory trimmer's schedule."""

import asyncio
import concurrent.futures

import numpy as np
import pytest

from medvlkit.apps.serve.batcher import MicroBatcher
from medvlkit.apps.serve.memory import Trimmer


def test_concurrent_items_share_batches_in_order():
    calls = []

    def fn(items):
        calls.append(list(items))
        return np.array([[x, 2 * x] for x in items])

    async def run():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(fn, pool, max_batch=4, max_wait_ms=100)
            out = await asyncio.gather(*(b.submit([i]) for i in range(10)), b.submit([10, 11]))
            await b.close()
            return out, b.stats

    out, stats = asyncio.run(run())
    assert [o.tolist() for o in out] == [[[i, 2 * i]] for i in range(10)] + [[[10, 20], [11, 22]]]
    assert max(len(c) for c in calls) == 4 and sum(len(c) for c in calls) == 12 == stats.items
    assert stats.batches == len(calls) <= 4


def test_a_failing_batch_fails_its_waiters_and_the_next_batch_runs():
    def fn(items):
        if "bad" in items:
            raise ValueError("boom")
        return np.array([[len(x)] for x in items])

    async def run():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(fn, pool, max_batch=8, max_wait_ms=50)
            first = await asyncio.gather(b.submit(["bad"]), b.submit(["ok"]), return_exceptions=True)
            second = await b.submit(["fine"])
            await b.close()
            return first, second

    first, second = asyncio.run(run())
    assert all(isinstance(r, ValueError) for r in first) and second.tolist() == [[4]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, None, max_batch=0)


def test_trimmer_trims_every_n_calls():
    t = Trimmer(every=3)
    seen = []
    t._trim = lambda pad: seen.append(pad)
    for _ in range(7):
        t()
    assert seen == [0, 0]
