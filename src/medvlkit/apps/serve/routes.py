"""The endpoints of ``medvlkit serve``, each a function of its form fields and the app's
:class:`~medvlkit.apps.serve.state.ServeState` (``Depends(get_state)``). The token is checked before any body is read
(:class:`~medvlkit.apps.serve.guards.TokenGate`)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.responses import Response

from medvlkit.apps.serve.state import ServeState, get_state
from medvlkit.errors import ImageReadError, MedvlkitError

router = APIRouter()


async def _bad_request(fn):
    """Await ``fn()``; a MedvlkitError (a bad field value) becomes 400 with its message."""
    try:
        return await fn()
    except MedvlkitError as err:
        raise HTTPException(400, str(err)) from None


@router.get("/health")
async def health(state: ServeState = Depends(get_state)) -> dict:
    """Liveness: the model is loaded and the server answers."""
    return {"status": "ok", "model": state.engine.model.name}


@router.get("/info")
async def info(state: ServeState = Depends(get_state)) -> dict:
    """The model, fingerprint, preprocessing, prompt sets, gate threshold, index size, versions, batching."""
    s, batcher, limits = state.batcher.stats, state.batcher, state.limits
    return state.engine.info() | {
        "batching": {"max_batch": batcher.max_batch, "max_wait_ms": 1000 * batcher.max_wait, "batches": s.batches,
                     "images": s.items, "largest": s.largest},
        "limits": {"max_upload_mb": limits.max_upload_bytes / 2 ** 20, "max_files": limits.max_files,
                   "max_texts": limits.max_texts, "max_k": limits.max_k,
                   "max_request_pixels": limits.max_request_pixels, "max_decode_pixels": limits.max_decode_pixels,
                   "body_timeout_s": limits.body_timeout_s, "fast_decode": limits.fast_decode}}


async def _answer(state: ServeState, files: list[UploadFile], prompts: str | None, classes: str | None,
                  mode: str | None, k: int, explain: bool, study_uid: str | None = None,
                  series_uid: str | None = None) -> dict:
    engine = state.engine
    # a served prompt set is a lookup: only a new class list waits for the model's thread
    vectors = await state.on_model(engine.prompt_vectors, prompts, classes, mode) if engine.needs_model(
        classes, mode, prompts) else engine.prompt_vectors(prompts, classes, mode)
    not_images: list[dict] = []
    if study_uid or series_uid:
        pixels, names, not_images = await state.read_pacs(study_uid, series_uid)
    else:
        pixels, names = await state.read_uploads(files or [])
    emb = await state.batcher.submit(pixels)
    results = engine.read(emb, vectors, names)
    if k:
        for res, hits in zip(results, engine.search(emb, k)):
            res["similar"] = hits
    if explain:
        for res, px in zip(results, pixels):
            top = max(res["probabilities"], key=res["probabilities"].get)
            try:
                res["heatmap"] = await state.on_model(engine.heatmap, px, vectors, top)
            except MedvlkitError as err:  # no method for this tower: the reading stands without it
                res["heatmap"] = {"error": str(err)}
    return {"model": engine.model.name, "fingerprint": engine.model.fingerprint(),
            "prompts": engine.describe_prompts(vectors), "results": results} | (
        {"source": {"study_uid": study_uid, "series_uid": series_uid}, "not_images": not_images}
        if study_uid or series_uid else {})


@router.post("/zeroshot")
async def zeroshot(files: list[UploadFile] | None = File(None, description="PNG, JPEG, TIFF, BMP, GIF, WebP or "
                                                                            "DICOM (or study_uid / series_uid)"),
                   prompts: str | None = Form(None, description="a served prompt set (GET /info)"),
                   classes: str | None = Form(None, description="comma-separated class names: with prompts, "
                                              "the set restricted to them (the softmax runs over those only); "
                                              "alone, generic prompts of these names"),
                   mode: str | None = Form(None, description="softmax or pos_neg (with classes)"),
                   k: int = Form(0, description="similar indexed cases per image (0: none)"),
                   explain: bool = Form(False, description="add a heatmap of the top class (PNG overlay)"),
                   study_uid: str | None = Form(None, description="read this study's images from the PACS "
                                                "(serve --pacs) instead of uploads"),
                   series_uid: str | None = Form(None, description="read this series' images from the PACS"),
                   state: ServeState = Depends(get_state)) -> dict:
    """Zero-shot reading of one or more images (uploaded, or a study or series fetched from the PACS the server
    was started with): the gate's verdict and P(medical), class probabilities (softmax over classes, or per class
    positive vs negative prompt), optionally the k most similar indexed cases and a heatmap of where the model sees
    its top class (medvlkit explain's method). Results from the PACS are named by SOP Instance UID."""
    state.check_k(k)
    if bool(files) == bool(study_uid or series_uid):
        raise HTTPException(400, "send images (files) or a study_uid / series_uid to read from the PACS, one of them")
    return await _bad_request(lambda: _answer(state, files or [], prompts, classes, mode, k, explain, study_uid,
                                              series_uid))


@router.post("/embed")
async def embed(files: list[UploadFile] | None = File(None, description="images"),
                texts: list[str] | None = Form(None, description="texts (repeat the field)"),
                state: ServeState = Depends(get_state)) -> dict:
    """Unit embeddings of images or texts (in the model's shared space)."""
    engine = state.engine
    if bool(files) == bool(texts):
        raise HTTPException(400, "send images (files) or texts, one kind per request")
    if texts:
        if len(texts) > state.limits.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; at most {state.limits.max_texts}")
        vectors = await _bad_request(lambda: state.on_model(engine.encode_texts, texts))
        return {"model": engine.model.name, "kind": "text", "embeddings": vectors.tolist()}
    pixels, names = await state.read_uploads(files or [])
    vectors = await state.batcher.submit(pixels)
    return {"model": engine.model.name, "kind": "image", "files": names, "embeddings": vectors.tolist()}


@router.post("/search")
async def search(file: UploadFile | None = File(None, description="a query image"),
                 text: str | None = Form(None, description="a text query"),
                 k: int = Form(5, description="results"), state: ServeState = Depends(get_state)) -> dict:
    """The k indexed images nearest to a text or an image, with cosine scores; thumbnails at /image/{id}."""
    engine = state.engine
    state.check_k(k)
    if (file is None) == (not text):
        raise HTTPException(400, "send exactly one query: a text or an image file")
    if engine.index is None:
        raise HTTPException(409, "no search index is loaded: start the server with --index DIR (built by "
                                 "`medvlkit index`)")
    if text:
        query = await _bad_request(lambda: state.on_model(engine.encode_texts, [text]))
    else:
        pixels, _ = await state.read_uploads([file] if file is not None else [])
        query = await state.batcher.submit(pixels)
    return {"model": engine.model.name, "query": "text" if text else "image",
            "results": engine.search(np.asarray(query), max(k, 1))[0]}


@router.get("/image/{image_id}", responses={200: {"content": {"image/jpeg": {}}}})
async def image(image_id: int, state: ServeState = Depends(get_state)) -> Response:
    """A thumbnail (JPEG, at most 256 px) of indexed image ``image_id``: by id only, no path is accepted."""
    try:
        data = await state.in_pool(state.engine.thumbnail, image_id)
    except KeyError:
        raise HTTPException(404, f"no indexed image with id {image_id}") from None
    except ImageReadError as err:
        raise HTTPException(404, f"indexed image {image_id} can no longer be read ({err.reason})") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
