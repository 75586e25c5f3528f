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
from medvlkit.errors import ImageReadError, ImageTooLargeError, MedvlkitError


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
        pacs: a DICOMweb root (``http://host:port/dicom-web``) whose studies and series ``POST /zeroshot`` reads by
            UID (credentials from the server's environment, :mod:`medvlkit.data.dicomweb`).
    """

    def __init__(self, engine: ServeEngine, limits: ServeLimits | None = None, max_batch: int = 32,
                 max_wait_ms: float = 5.0, io_threads: int | None = None, pacs: str | None = None) -> None:
        self.engine, self.limits, self.pacs = engine, limits or ServeLimits(), pacs
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
        return await self.decode_all(datas, names)

    async def read_pacs(self, study: str | None, series: str | None) -> tuple[list, list[str], list[dict]]:
        """The images of a study or series on the configured PACS, fetched (and cached) by SOP Instance UID, then
        decoded like uploads: (images, SOP Instance UIDs, instances left out as not images). 409 without a PACS, 413
        for more instances than a request may hold, 404 for none, 502 when the PACS fails."""
        from medvlkit.data.dicomweb import check_uid, fetch_instance, parse_item, study_images

        if self.pacs is None:
            raise HTTPException(409, "no PACS is configured: start the server with --pacs <DICOMweb root>")
        try:
            check_uid("study", study)
            check_uid("series", series)
        except MedvlkitError as err:
            raise HTTPException(400, str(err)) from None
        try:
            items, not_images = await self.in_pool(study_images, self.pacs, study, series)
        except MedvlkitError as err:
            raise HTTPException(502, str(err)) from None
        if not items and not not_images:
            named = f"series {series}" if series else f"study {study}"
            raise HTTPException(404, f"the PACS holds no instance of {named}")
        if len(items) > self.limits.max_files:
            raise HTTPException(413, f"{len(items)} images in this study/series; at most {self.limits.max_files} per "
                                     "request: name a series")
        if not items:
            raise HTTPException(404, f"no image in this study/series ({len(not_images)} non-image instances)")
        try:
            paths = await asyncio.gather(*(self.in_pool(fetch_instance, item) for item in items))
        except ImageReadError as err:
            raise HTTPException(502, str(err)) from None
        names = [parse_item(item).sop for item in items]
        images, names = await self.decode_all([p.read_bytes() for p in paths], names)
        return images, names, [{"file": parse_item(item).sop, "reason": why} for item, why in not_images]

    async def decode_all(self, datas: list[bytes], names: list[str]) -> tuple[list, list[str]]:
        """Image files' bytes -> decoded uint8 images, within the request's and the server's pixel budgets."""
        limits = self.limits
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
