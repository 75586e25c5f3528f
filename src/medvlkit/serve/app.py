"""The HTTP layer of ``medvlkit serve``: a FastAPI app around a :class:`~medvlkit.serve.engine.ServeEngine`.

Every model call runs on one inference thread (image batches gathered by the micro-batcher); decoding and
thumbnails run on a small pool of threads; the event loop only moves bytes. Errors are JSON ``{"error": ...}``
with a 4xx status naming the problem (400 unreadable image or bad field, 401 token, 404 unknown id, 409 no index,
413 too large, 415 not an image); an unexpected failure is logged and answered 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from importlib import resources

import numpy as np
from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from medvlkit.data.io import declared_pixels
from medvlkit.errors import ImageReadError, ImageTooLargeError, MedvlkitError
from medvlkit.serve.batcher import MicroBatcher
from medvlkit.serve.engine import ServeEngine, ServeLimits
from medvlkit.serve.guards import BodyLimit, PixelBudget, TokenGate, error_response
from medvlkit.serve.memory import Trimmer

logger = logging.getLogger("medvlkit.serve")


def _error(status: int, message: str, **extra) -> JSONResponse:
    return error_response(status, message, **extra)


def _declared(data: bytes, name: str) -> int:
    """Pixels an upload declares; 413 / 415 / 400 for a header over the limit, not an image, or unreadable."""
    try:
        return declared_pixels(data, name)
    except ImageTooLargeError as err:
        raise HTTPException(413, str(err)) from None
    except ImageReadError as err:
        raise HTTPException(415 if err.reason.startswith("not a PNG") else 400, str(err)) from None


def create_app(engine: ServeEngine, token: str | None = None, limits: ServeLimits | None = None,
               max_batch: int = 32, max_wait_ms: float = 5.0, io_threads: int | None = None) -> FastAPI:
    """The ASGI app serving ``engine``.

    Args:
        engine: the loaded model, prompt sets and index.
        token: when set, every data endpoint needs ``Authorization: Bearer <token>`` (the page, its script and
            the API docs hold no data and stay public).
        limits: upload size, files and texts per request, largest k.
        max_batch, max_wait_ms: the micro-batcher's batch size and how long a lone image waits for company.
        io_threads: threads decoding uploads and making thumbnails (default: the CPU count, at most 8).
    """
    limits = limits or ServeLimits()
    infer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="medvlkit-infer")
    pool = concurrent.futures.ThreadPoolExecutor(io_threads or min(8, os.cpu_count() or 2),
                                                 thread_name_prefix="medvlkit-io")
    trim = Trimmer(every=4)

    def encode(pixels):
        try:
            return engine.encode_pixels(pixels)
        finally:
            trim()

    batcher = MicroBatcher(encode, infer, max_batch, max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await batcher.close()
        infer.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=False, cancel_futures=True)

    # the description is public (OpenAPI): it never names the model, whose spec may be a file path
    app = FastAPI(title="medvlkit", version=engine.info()["versions"]["medvlkit"], lifespan=lifespan,
                  description="Zero-shot reading, the medical-image gate, embeddings and similar-case search with "
                              "one medical vision-language model (GET /info names it).")
    app.state.engine, app.state.batcher = engine, batcher
    budget = PixelBudget(limits.max_decode_pixels)
    # inside the request log (added later, outer), outside FastAPI: the token is checked from the headers before the
    # body limit and timeout watch the body being read (an HTTPException raised in receive reaches FastAPI as such)
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes, timeout_s=limits.body_timeout_s)
    app.add_middleware(TokenGate, token=token)

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        """One line per request: method, path, status, milliseconds, body size. Never image contents or names."""
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            logger.info("%s %s %d %.1f ms %s bytes", request.method, request.url.path, status,
                        1000 * (time.perf_counter() - start), request.headers.get("content-length", "0"))

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own and the router's (unknown path, wrong method)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        response = _error(err.status_code, str(err.detail))
        response.headers.update(err.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors())
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _error(500, f"internal error ({type(err).__name__}); see the server's log")

    api = APIRouter()  # the token is checked before any body is read: TokenGate

    async def in_pool(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def on_model(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(infer, fn, *args)

    async def read_uploads(files: list[UploadFile]) -> tuple[list, list[str]]:
        """Uploads -> decoded uint8 images and their names. 413/415/400 for too many, not images, unreadable."""
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
            async with budget.hold(n):  # decoding memory grows with pixels: bounded over all requests
                return await in_pool(engine.decode, data, name, limits.fast_decode)

        results = await asyncio.gather(*(decode(d, n, px) for d, n, px in zip(datas, names, pixels)),
                                       return_exceptions=True)
        for name, res in zip(names, results):
            if isinstance(res, ImageTooLargeError):
                raise HTTPException(413, str(res))
            if isinstance(res, ImageReadError):
                status = 415 if res.reason.startswith("not a PNG") else 400
                raise HTTPException(status, str(res))
            if isinstance(res, BaseException):
                raise HTTPException(400, f"cannot read image '{name}': {type(res).__name__}")
        return list(results), names

    def bad_request(fn):
        """MedvlkitError (a bad field value) -> 400 with its message."""
        async def wrapped(*args):
            try:
                return await fn(*args)
            except MedvlkitError as err:
                raise HTTPException(400, str(err)) from None
        return wrapped

    def check_k(k: int) -> None:
        if not 0 <= k <= limits.max_k:
            raise HTTPException(400, f"k={k}: must be between 0 and {limits.max_k}")

    @api.get("/health")
    async def health() -> dict:
        """Liveness: the model is loaded and the server answers."""
        return {"status": "ok", "model": engine.model.name}

    @api.get("/info")
    async def info() -> dict:
        """The model, fingerprint, preprocessing, prompt sets, gate threshold, index size, versions, batching."""
        s = batcher.stats
        return engine.info() | {"batching": {"max_batch": batcher.max_batch, "max_wait_ms": 1000 * batcher.max_wait,
                                             "batches": s.batches, "images": s.items, "largest": s.largest},
                                "limits": {"max_upload_mb": limits.max_upload_bytes / 2 ** 20,
                                           "max_files": limits.max_files, "max_texts": limits.max_texts,
                                           "max_k": limits.max_k, "max_request_pixels": limits.max_request_pixels,
                                           "max_decode_pixels": limits.max_decode_pixels,
                                           "body_timeout_s": limits.body_timeout_s,
                                           "fast_decode": limits.fast_decode}}

    @api.post("/zeroshot")
    async def zeroshot(files: list[UploadFile] = File(..., description="PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM"),
                       prompts: str | None = Form(None, description="a served prompt set (GET /info)"),
                       classes: str | None = Form(None, description="comma-separated class names: with prompts, "
                                                  "the set restricted to them (the softmax runs over those only); "
                                                  "alone, generic prompts of these names"),
                       mode: str | None = Form(None, description="softmax or pos_neg (with classes)"),
                       k: int = Form(0, description="similar indexed cases per image (0: none)"),
                       explain: bool = Form(False, description="add a heatmap of the top class (PNG overlay)")) -> dict:
        """Zero-shot reading of one or more images: the gate's verdict and P(medical), class probabilities
        (softmax over classes, or per class positive vs negative prompt), optionally the k most similar indexed
        cases and a heatmap of where the model sees its top class (medvlkit explain's method)."""
        check_k(k)

        async def answer():
            # a served prompt set is a lookup: only a new class list waits for the model's thread
            vectors = await on_model(engine.prompt_vectors, prompts, classes, mode) if engine.needs_model(
                classes, mode, prompts) else engine.prompt_vectors(prompts, classes, mode)
            pixels, names = await read_uploads(files)
            emb = await batcher.submit(pixels)
            results = engine.read(emb, vectors, names)
            if k:
                for res, hits in zip(results, engine.search(emb, k)):
                    res["similar"] = hits
            if explain:
                for res, px in zip(results, pixels):
                    top = max(res["probabilities"], key=res["probabilities"].get)
                    try:
                        res["heatmap"] = await on_model(engine.heatmap, px, vectors, top)
                    except MedvlkitError as err:  # no method for this tower: the reading stands without it
                        res["heatmap"] = {"error": str(err)}
            return {"model": engine.model.name, "fingerprint": engine.model.fingerprint(),
                    "prompts": engine.describe_prompts(vectors), "results": results}
        return await bad_request(answer)()

    @api.post("/embed")
    async def embed(files: list[UploadFile] | None = File(None, description="images"),
                    texts: list[str] | None = Form(None, description="texts (repeat the field)")) -> dict:
        """Unit embeddings of images or texts (in the model's shared space)."""
        if bool(files) == bool(texts):
            raise HTTPException(400, "send images (files) or texts, one kind per request")
        if texts:
            if len(texts) > limits.max_texts:
                raise HTTPException(413, f"{len(texts)} texts in one request; at most {limits.max_texts}")
            vectors = await bad_request(lambda: on_model(engine.encode_texts, texts))()
            return {"model": engine.model.name, "kind": "text", "embeddings": vectors.tolist()}
        pixels, names = await read_uploads(files)
        vectors = await batcher.submit(pixels)
        return {"model": engine.model.name, "kind": "image", "files": names, "embeddings": vectors.tolist()}

    @api.post("/search")
    async def search(file: UploadFile | None = File(None, description="a query image"),
                     text: str | None = Form(None, description="a text query"),
                     k: int = Form(5, description="results")) -> dict:
        """The k indexed images nearest to a text or an image, with cosine scores; thumbnails at /image/{id}."""
        check_k(k)
        if (file is None) == (not text):
            raise HTTPException(400, "send exactly one query: a text or an image file")
        if engine.index is None:
            raise HTTPException(409, "no search index is loaded: start the server with --index DIR (built by "
                                     "`medvlkit index`)")
        if text:
            query = await bad_request(lambda: on_model(engine.encode_texts, [text]))()
        else:
            pixels, _ = await read_uploads([file])
            query = await batcher.submit(pixels)
        return {"model": engine.model.name, "query": "text" if text else "image",
                "results": engine.search(np.asarray(query), max(k, 1))[0]}

    @api.get("/image/{image_id}", responses={200: {"content": {"image/jpeg": {}}}})
    async def image(image_id: int) -> Response:
        """A thumbnail (JPEG, at most 256 px) of indexed image ``image_id``: by id only, no path is accepted."""
        try:
            data = await in_pool(engine.thumbnail, image_id)
        except KeyError:
            raise HTTPException(404, f"no indexed image with id {image_id}") from None
        except ImageReadError as err:
            raise HTTPException(404, f"indexed image {image_id} can no longer be read ({err.reason})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    app.include_router(api)
    static = resources.files("medvlkit.serve") / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text())

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app
