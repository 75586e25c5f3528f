"""The HTTP layer of ``medvlkit serve``: a FastAPI app around a :class:`~medvlkit.apps.serve.engine.ServeEngine`.

Every model call runs on one inference thread (image batches gathered by the micro-batcher); decoding and
thumbnails run on a small pool of threads; the event loop only moves bytes. Errors are JSON ``{"error": ...}``
with a 4xx status naming the problem (400 unreadable image or bad field, 401 token, 404 unknown id, 409 no index,
413 too large, 415 not an image); an unexpected failure is logged and answered 500 without a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from medvlkit.apps.serve.engine import ServeEngine, ServeLimits
from medvlkit.apps.serve.guards import BodyLimit, TokenGate, error_response
from medvlkit.apps.serve.routes import router
from medvlkit.apps.serve.state import ServeState

logger = logging.getLogger("medvlkit.apps.serve")
STATIC = resources.files("medvlkit.apps.serve") / "static"


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


async def http_error(_request: Request, err: Exception) -> JSONResponse:
    """FastAPI's own and the router's errors (unknown path, wrong method) as ``{"error": ...}``."""
    assert isinstance(err, StarletteHTTPException)  # registered for this type only
    response = error_response(err.status_code, str(err.detail))
    response.headers.update(err.headers or {})
    return response


async def validation_error(_request: Request, err: Exception) -> JSONResponse:
    """A missing or malformed field: 422 naming each problem."""
    assert isinstance(err, RequestValidationError)  # registered for this type only
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors())
    return error_response(422, f"invalid request: {problems}")


async def unexpected_error(_request: Request, err: Exception) -> JSONResponse:
    """Anything else: logged, answered 500 without a traceback."""
    logger.exception("unexpected error")
    return error_response(500, f"internal error ({type(err).__name__}); see the server's log")


async def page() -> HTMLResponse:
    """The web page (public: it holds no data)."""
    return HTMLResponse((STATIC / "index.html").read_text())


def create_app(engine: ServeEngine, token: str | None = None, limits: ServeLimits | None = None,
               max_batch: int = 32, max_wait_ms: float = 5.0, io_threads: int | None = None,
               pacs: str | None = None) -> FastAPI:
    """The ASGI app serving ``engine``: the endpoints of :mod:`medvlkit.apps.serve.routes` on a
    :class:`~medvlkit.apps.serve.state.ServeState`, the limits and token middleware, JSON errors and the page.

    Args:
        engine: the loaded model, prompt sets and index.
        token: when set, every data endpoint needs ``Authorization: Bearer <token>`` (the page, its script and
            the API docs hold no data and stay public).
        limits: upload size, files and texts per request, largest k.
        max_batch, max_wait_ms: the micro-batcher's batch size and how long a lone image waits for company.
        io_threads: threads decoding uploads and making thumbnails (default: the CPU count, at most 8).
        pacs: a DICOMweb root ``POST /zeroshot`` reads studies and series from by UID.
    """
    state = ServeState(engine, limits, max_batch, max_wait_ms, io_threads, pacs)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await state.close()

    # the description is public (OpenAPI): it never names the model, whose spec may be a file path
    app = FastAPI(title="medvlkit", version=engine.info()["versions"]["medvlkit"], lifespan=lifespan,
                  description="Zero-shot reading, the medical-image gate, embeddings and similar-case search with "
                              "one medical vision-language model (GET /info names it).")
    app.state.serve, app.state.engine, app.state.batcher = state, engine, state.batcher
    # inside the request log (added later, outer), outside FastAPI: the token is checked from the headers before the
    # body limit and timeout watch the body being read (an HTTPException raised in receive reaches FastAPI as such)
    app.add_middleware(BodyLimit, max_bytes=state.limits.max_upload_bytes, timeout_s=state.limits.body_timeout_s)
    app.add_middleware(TokenGate, token=token)
    app.middleware("http")(log_requests)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
    app.include_router(router)
    app.get("/", response_class=HTMLResponse, include_in_schema=False)(page)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
