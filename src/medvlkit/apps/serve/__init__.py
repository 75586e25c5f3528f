"""``medvlkit serve``: an HTTP API and a web page for zero-shot reading, the medical-image gate, embeddings and
similar-case search with one model. Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart).

- :class:`ServeEngine` (``engine.py``): the model, prompt sets, gate and index, with no HTTP;
- :class:`MicroBatcher` (``batcher.py``): concurrent requests' images in one forward pass;
- :class:`ServeState` (``state.py``): one app's engine, limits, threads and batcher, given to every endpoint by
  ``Depends(get_state)``;
- the endpoints (``routes.py``): one function each, callable by a test without an app;
- :func:`create_app` (``app.py``): assembly: the routes, the limits and token middleware (``guards.py``), JSON errors,
  the request log and the page in ``static/``;
- :func:`serve_task`: load everything once and run uvicorn.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medvlkit.errors import MedvlkitError

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "MEDVLKIT_SERVE_TOKEN"  # the bearer token, when not given as --token


def _require_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (form uploads)
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise MedvlkitError(f"serve needs FastAPI, uvicorn and python-multipart: pip install 'medvlkit[serve]' "
                            f"({err})") from None


def build_app(model_spec: str = "lite", index: Path | None = None, prompts: list[str] | None = None,
              token: str | None = None, max_upload_mb: float = 32.0, max_batch: int = 32, max_wait_ms: float = 5.0,
              gate_threshold: float | None = None, run=None, pacs: str | None = None):
    """Load the model (once), the prompt sets and the index, and return the FastAPI app serving them.

    Args:
        model_spec: any model spec; ``run`` (:class:`medvlkit.engine.options.RunOptions`) sets device and dtype.
        index: an index folder from ``medvlkit index`` (built with the same model) for search and similar cases.
        prompts: prompt set names or files (default: every shipped set but the gate's).
        token: a bearer token every data endpoint requires (None: open, for a loopback server).
        max_upload_mb: the largest request body.
        max_batch, max_wait_ms: micro-batching (see :class:`~medvlkit.apps.serve.batcher.MicroBatcher`).
        gate_threshold: P(medical) threshold (default: the model's validated one).
        pacs: a DICOMweb root (``http://host:port/dicom-web``) ``POST /zeroshot`` reads studies and series from by
            UID; credentials from the environment (:mod:`medvlkit.data.dicomweb`).
    """
    _require_extra()
    from medvlkit.apps.serve.app import create_app
    from medvlkit.apps.serve.engine import ServeEngine, ServeLimits
    from medvlkit.engine.options import RunOptions
    from medvlkit.tasks.search import load_index

    if max_upload_mb <= 0 or max_batch < 1 or max_wait_ms < 0:
        raise MedvlkitError(f"--max-upload-mb {max_upload_mb} must be > 0, --max-batch {max_batch} >= 1 and "
                            f"--max-wait-ms {max_wait_ms} >= 0")
    run = run or RunOptions()
    if pacs is not None:
        from medvlkit.data.dicomweb import parse_spec

        query = parse_spec(pacs)
        if query.level != "instances" or query.study or query.series or query.filters:
            raise MedvlkitError(f"--pacs {pacs}: give the DICOMweb root only (e.g. http://pacs:8042/dicom-web)")
        pacs = query.root
    idx = load_index(index) if index is not None else None
    model = run.load_model(model_spec or (idx.meta["model"] if idx else "lite"))
    engine = ServeEngine(model, prompts, idx, gate_threshold, cache=run.cache, cache_dir=run.cache_dir)
    return create_app(engine, token, ServeLimits(max_upload_bytes=int(max_upload_mb * 2 ** 20)), max_batch,
                      max_wait_ms, pacs=pacs)


def serve_task(host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **app_options) -> None:
    """Build the app (:func:`build_app`'s options) and serve it with uvicorn until Ctrl-C.

    Raises:
        MedvlkitError: a non-loopback ``host`` without a token (anyone on the network could use the model).
    """
    _require_extra()
    import uvicorn

    if host not in _LOOPBACK and not app_options.get("token"):
        raise MedvlkitError(f"--host {host} exposes the server beyond this machine: set a token (--token or "
                            f"${TOKEN_ENV}) that every request must send")
    from medvlkit.apps.serve.memory import limit_malloc_arenas

    limit_malloc_arenas()
    app = build_app(**app_options)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("medvlkit.apps.serve").setLevel(getattr(logging, log_level.upper(), logging.INFO))
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
