"""What the endpoints of ``medvlkit serve`` share, per app: the engine, the limits, the inference thread and the
micro-batcher, the decoding pool and its pixel budget. Endpoints receive it through ``Depends(get_state)``, so a
test can build one and call an endpoint function directly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os

from fastapi import HTTPException, Request, UploadFile

from medvlkit.apps.serve.batcher import MicroBatcher
from medvlkit.apps.serve.engine import ServeEngine, ServeLimits
from medvlkit.apps.serve.guards import PixelBudget
from medvlkit.apps.serve.memory import Trimmer
from medvlkit.data.io import declared_pixels
from medvlkit.errors import ImageReadError, ImageTooLargeError


def _declared(data: bytes, name: str) -> int:
    """Pixels an upload declares; 413 / 415 / 400 for a header over the limit, not an image, or unreadable."""
    try:
        return declared_pixels(data, name)
    except ImageTooLargeError as err:
        raise HTTPException(413, str(err)) from None
    except ImageReadError as err:
        raise HTTPException(415 if err.reason.startswith("not a PNG") else 400, str(err)) from None


class ServeState:
    """One app's engine, limits, threads and batcher (see the module docstring).

    Args:
        engine: the loaded model, prompt sets and index.
        limits: upload size, files and texts per request, largest k, pixel budgets.
        max_batch, max_wait_ms: the micro-batcher's batch size and how long a lone image waits for company.
        io_threads: threads decoding uploads and making thumbnails (default: the CPU count, at most 8).
    """

    def __init__(self, engine: ServeEngine, limits: ServeLimits | None = None, max_batch: int = 32,
                 max_wait_ms: float = 5.0, io_threads: int | None = None) -> None:
        self.engine, self.limits = engine, limits or ServeLimits()
        self.infer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="medvlkit-infer")
        self.pool = concurrent.futures.ThreadPoolExecutor(io_threads or min(8, os.cpu_count() or 2),
                                                          thread_name_prefix="medvlkit-io")
        self._trim = Trimmer(every=4)
        self.batcher = MicroBatcher(self._encode, self.infer, max_batch, max_wait_ms)
        self.budget = PixelBudget(self.limits.max_decode_pixels)

    def _encode(self, pixels):
        try:
            return self.engine.encode_pixels(pixels)
        finally:
            self._trim()

    async def close(self) -> None:
        """Stop the batcher and the threads (the app's shutdown)."""
        await self.batcher.close()
        self.infer.shutdown(wait=False, cancel_futures=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def in_pool(self, fn, *args):
        """``fn(*args)`` on a decoding thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def on_model(self, fn, *args):
        """``fn(*args)`` on the inference thread (every model call runs there)."""
        return await asyncio.get_running_loop().run_in_executor(self.infer, fn, *args)

    def check_k(self, k: int) -> None:
        """400 unless 0 <= k <= the limit."""
        if not 0 <= k <= self.limits.max_k:
            raise HTTPException(400, f"k={k}: must be between 0 and {self.limits.max_k}")

    async def read_uploads(self, files: list[UploadFile]) -> tuple[list, list[str]]:
        """Uploads -> decoded uint8 images and their names. 413/415/400 for too many, not images, unreadable."""
        limits = self.limits
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; at most {limits.max_files}")
        names = [f.filename or f"file {i + 1}" for i, f in enumerate(files)]
        datas = [await f.read() for f in files]
        for name, data in zip(names, datas):
            if not data:
                raise HTTPException(400, f"'{name}' is empty")
        pixels = [_declared(d, n) for d, n in zip(datas, names)]  # from the headers: nothing decoded yet
        if sum(pixels) > limits.max_request_pixels:
            raise HTTPException(413, f"the images of this request declare {sum(pixels):,} pixels together, over the "
                                     f"limit of {limits.max_request_pixels:,} per request; send fewer or smaller")

        async def decode(data: bytes, name: str, n: int):
            async with self.budget.hold(n):  # decoding memory grows with pixels: bounded over all requests
                return await self.in_pool(self.engine.decode, data, name, limits.fast_decode)

        results = await asyncio.gather(*(decode(d, n, px) for d, n, px in zip(datas, names, pixels)),
                                       return_exceptions=True)
        for name, res in zip(names, results):
            if isinstance(res, ImageTooLargeError):
                raise HTTPException(413, str(res))
            if isinstance(res, ImageReadError):
                raise HTTPException(415 if res.reason.startswith("not a PNG") else 400, str(res))
            if isinstance(res, BaseException):
                raise HTTPException(400, f"cannot read image '{name}': {type(res).__name__}")
        return list(results), names


def get_state(request: Request) -> ServeState:
    """The dependency every endpoint takes: its app's :class:`ServeState`."""
    return request.app.state.serve
