"""Every endpoint of `medvlkit serve`, on the real lite model (real chest X-rays) and a tiny random hf: CLIP: the
answers equal the library's own (zero-shot, embed, search), and bad input gets a 4xx JSON error, never a 500."""

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import png_header
from medvlkit.apps.serve.app import create_app
from medvlkit.apps.serve.engine import ServeLimits
from medvlkit.data import load_dataset
from medvlkit.data.prompts import load_prompt_set
from medvlkit.engine.features import embed_images, embed_texts
from medvlkit.tasks.zeroshot import zeroshot_classify

pytest.importorskip("fastapi")


def upload(path: Path, name: str | None = None) -> tuple:
    return ("files", (name or path.name, path.read_bytes(), "application/octet-stream"))


@pytest.fixture
def client(served):
    engine, folder = served
    with TestClient(create_app(engine, limits=ServeLimits(max_upload_bytes=4 << 20, max_files=4))) as c:
        yield c, engine, folder


def test_health_info_and_page(client):
    c, engine, _ = client
    assert c.get("/health").json() == {"status": "ok", "model": engine.model.name}
    info = c.get("/info").json()
    assert info["model"] == engine.model.name and info["fingerprint"] == engine.model.fingerprint()
    assert info["prompt_sets"]["pneumonia"]["classes"] == ["normal", "pneumonia"]
    assert info["prompt_sets"]["chest_xray_findings"]["mode"] == "pos_neg"
    assert info["index"]["size"] == 6 and info["preprocess"]["image_size"] == engine.model.preprocess_cfg.image_size
    page = c.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text and c.get("/static/app.js").status_code == 200
    assert c.get("/openapi.json").json()["paths"].keys() >= {"/zeroshot", "/embed", "/search", "/image/{image_id}"}


def test_zeroshot_equals_the_library(client):
    c, engine, folder = client
    files = sorted(folder.iterdir())[:2]
    got = c.post("/zeroshot", files=[upload(f) for f in files], data={"prompts": "pneumonia", "k": "3"}).json()
    ds = load_dataset(folder)
    want = zeroshot_classify(engine.model, ds, load_prompt_set("pneumonia"), cache=False, num_workers=0,
                             progress=False)
    for res, f in zip(got["results"], files):
        row = want.embeddings.items.index(str(f.resolve()))
        assert res["file"] == f.name
        np.testing.assert_allclose([res["probabilities"][c] for c in want.classnames], want.probs[row], atol=1e-5)
        assert res["prediction"] == want.classnames[int(want.probs[row].argmax())]
        assert res["similar"][0]["score"] == pytest.approx(1.0, abs=1e-4)  # the indexed image itself comes first
        assert engine.index.files[res["similar"][0]["id"]] == str(f.resolve())
    assert got["prompts"]["name"] == "pneumonia" and got["prompts"]["texts"]["pneumonia"]
    assert got["model"] == engine.model.name
    if engine.model.validated_gate_threshold is not None:  # lite: real X-rays pass its validated gate
        assert all(r["gate"]["medical"] for r in got["results"])
    else:
        assert got["results"][0]["gate"]["medical"] is None and 0 <= got["results"][0]["gate"]["p_medical"] <= 1
    pos_neg = c.post("/zeroshot", files=[upload(files[0])], data={"prompts": "chest_xray_findings"}).json()
    assert pos_neg["results"][0]["prediction"] is None and len(pos_neg["results"][0]["probabilities"]) == 19
    heat = c.post("/zeroshot", files=[upload(files[0])], data={"explain": "true"}).json()["results"][0]["heatmap"]
    top = max(got["results"][0]["probabilities"], key=got["results"][0]["probabilities"].get)
    assert heat["class"] == top and heat["method"] in ("gradcam", "rollout") and len(heat["png_base64"]) > 1000
    adhoc = c.post("/zeroshot", files=[upload(files[0])], data={"classes": "normal, pneumonia"}).json()
    assert list(adhoc["results"][0]["probabilities"]) == ["normal", "pneumonia"]


def test_embed_equals_the_library(client):
    c, engine, folder = client
    files = sorted(folder.iterdir())[:3]
    got = c.post("/embed", files=[upload(f) for f in files]).json()
    want = embed_images(engine.model, load_dataset(folder), cache=False, num_workers=0, progress=False)
    rows = [want.items.index(str(f.resolve())) for f in files]
    np.testing.assert_allclose(np.array(got["embeddings"]), want.vectors[rows], atol=1e-5)
    texts = c.post("/embed", data={"texts": ["pneumonia", "a normal chest x-ray"]}).json()
    np.testing.assert_allclose(np.array(texts["embeddings"]), embed_texts(engine.model, ["pneumonia",
                                                                                         "a normal chest x-ray"]),
                               atol=1e-6)


def test_search_and_thumbnails(client):
    c, engine, folder = client
    query = sorted(folder.iterdir())[1]
    hits = c.post("/search", files={"file": (query.name, query.read_bytes())}, data={"k": "4"}).json()["results"]
    assert len(hits) == 4 and engine.index.files[hits[0]["id"]] == str(query.resolve())
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    by_text = c.post("/search", data={"text": "pneumonia", "k": "50"}).json()["results"]
    assert len(by_text) == 6  # k capped at the index size
    thumb = c.get(f"/image/{hits[0]['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    for bad in ("6", "-1", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "x"):
        r = c.get(f"/image/{bad}")
        assert r.status_code in (404, 422) and "error" in r.json(), bad


def test_bad_input_gets_a_4xx_json_error(client, monkeypatch):
    c, _, folder = client
    jpeg = sorted(folder.iterdir())[0].read_bytes()
    cases = {
        "not an image": ([("files", ("notes.txt", b"hello, not an image", "text/plain"))], {}, 415),
        "truncated JPEG": ([("files", ("cut.jpg", jpeg[:300], "image/jpeg"))], {}, 400),
        "empty file": ([("files", ("empty.png", b"", "image/png"))], {}, 400),
        "pixel bomb": ([("files", ("bomb.png", png_header(30000, 30000), "image/png"))], {}, 413),
        "too many files": ([("files", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(5)], {}, 413),
        "unknown prompt set": ([("files", ("a.jpg", jpeg, "image/jpeg"))], {"prompts": "nope"}, 400),
        "prompts and classes": ([("files", ("a.jpg", jpeg, "image/jpeg"))], {"prompts": "pneumonia",
                                                                          "classes": "a,b"}, 400),
        "bad k": ([("files", ("a.jpg", jpeg, "image/jpeg"))], {"k": "1000"}, 400),
        "no file": (None, {"prompts": "pneumonia"}, 400),  # nor a study_uid / series_uid (serve --pacs)
    }
    monkeypatch.setenv("MEDVLKIT_MAX_PIXELS", str(50_000_000))
    for what, (files, data, status) in cases.items():
        r = c.post("/zeroshot", files=files, data=data)
        assert r.status_code == status and r.json()["error"], (what, r.status_code, r.text)
    big = [("files", ("big.jpg", b"\xff\xd8\xff" + b"0" * (5 << 20), "image/jpeg"))]
    r = c.post("/zeroshot", files=big)
    assert r.status_code == 413 and "upload limit of 4 MB" in r.json()["error"]
    assert c.post("/embed").status_code == 400 and c.post("/search", data={"k": "3"}).status_code == 400
    assert c.get("/nowhere").json()["status"] == 404 and c.delete("/zeroshot").status_code == 405


def test_chunked_upload_over_the_limit_is_refused(client):
    c, _, _ = client
    boundary = "b0undary"

    def body():  # no Content-Length: the limit is enforced on the streamed bytes
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n"
               "Content-Type: image/jpeg\r\n\r\n").encode()
        for _ in range(6):
            yield b"\xff" * (1 << 20)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = c.post("/zeroshot", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "upload limit" in r.json()["error"]


def test_dicom_upload(tiny_served):
    import pydicom

    engine, _ = tiny_served
    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    with TestClient(create_app(engine)) as c:
        r = c.post("/zeroshot", files=[("files", ("scan", ct.read_bytes(), "application/dicom"))])
    assert r.status_code == 200 and r.json()["results"][0]["file"] == "scan"


def test_token_required_on_every_data_endpoint(tiny_served):
    engine, folder = tiny_served
    image = sorted(folder.iterdir())[0].read_bytes()
    with TestClient(create_app(engine, token="s3cret")) as c:
        calls = [("get", "/health", {}), ("get", "/info", {}), ("get", "/image/0", {}),
                 ("post", "/zeroshot", {"files": [("files", ("a.png", image))]}),
                 ("post", "/embed", {"data": {"texts": ["x"]}}), ("post", "/search", {"data": {"text": "x"}})]
        for method, path, kwargs in calls:
            assert getattr(c, method)(path, **kwargs).status_code == 401, path
            wrong = getattr(c, method)(path, headers={"Authorization": "Bearer nope"}, **kwargs)
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
            assert getattr(c, method)(path, headers={"Authorization": "Bearer s3cret"}, **kwargs).status_code == 200
        assert c.get("/").status_code == 200  # the page holds no data; it asks for the token


def test_no_index_is_a_409(tiny_served):
    from medvlkit.apps.serve.engine import ServeEngine

    engine, folder = tiny_served
    with TestClient(create_app(ServeEngine(engine.model, ["pneumonia"], cache=False))) as c:
        assert c.post("/search", data={"text": "x"}).status_code == 409
        assert c.get("/image/0").status_code == 404
        image = sorted(folder.iterdir())[0]
        assert c.post("/zeroshot", files=[upload(image)], data={"k": "2"}).status_code == 400


def test_micro_batching_gives_the_single_request_answers(tiny_served):
    """Eight concurrent one-image requests share forward passes and get what each would get alone."""
    import httpx

    engine, folder = tiny_served
    images = sorted(folder.iterdir())
    images = (images * 2)[:8]
    alone = engine.embed_images([p.read_bytes() for p in images[:1]])
    app = create_app(engine, max_batch=8, max_wait_ms=200)

    async def run():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                replies = await asyncio.gather(*(c.post("/embed", files=[upload(p)]) for p in images))
                stats = (await c.get("/info")).json()["batching"]
        return replies, stats

    replies, stats = asyncio.run(run())
    got = np.array([r.json()["embeddings"][0] for r in replies])
    singles = np.concatenate([engine.embed_images([p.read_bytes()]) for p in images])
    np.testing.assert_allclose(got, singles, atol=1e-5)
    np.testing.assert_allclose(got[0], alone[0], atol=1e-5)
    assert stats["images"] == 8 and stats["batches"] < 8 and stats["largest"] > 1


def test_an_endpoint_is_a_function_a_test_can_call(served):
    """The endpoints are plain functions of their fields and the app's state (no app, no HTTP): the same answers."""
    from fastapi import HTTPException

    from medvlkit.apps.serve.routes import health, info, search
    from medvlkit.apps.serve.state import ServeState

    engine, _ = served

    async def calls():
        state = ServeState(engine, ServeLimits(max_k=3))
        try:
            assert await health(state) == {"status": "ok", "model": engine.model.name}
            assert (await info(state))["limits"]["max_k"] == 3
            with pytest.raises(HTTPException) as err:
                await search(file=None, text="pneumonia", k=9, state=state)
            assert err.value.status_code == 400 and "k=9" in err.value.detail
        finally:
            await state.close()

    asyncio.run(calls())
