"""Issue 25, items 9 (the token checked before the body) and 10 (pixels within the limit exhausting memory), and the
one pixel path every caller reads through. Each test failed on the main of 2026-12-06 (peak memory and time before
and after: benchmarks/serve_pixels.py)."""

import asyncio
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import make_image, png_header
from medvlkit.apps.serve.app import create_app
from medvlkit.apps.serve.engine import ServeLimits


@pytest.fixture(scope="module")
def engine(tiny_clip_dir):
    from medvlkit import create_model
    from medvlkit.apps.serve.engine import ServeEngine

    return ServeEngine(create_model(f"hf:{tiny_clip_dir}"), ["pneumonia"], cache=False)


def _call(app, method: str, path: str, headers: dict, receive):
    """Run one request through the ASGI app with a hand-made ``receive``; returns (status, body)."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1", "root_path": ""}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body


def test_item09_the_token_is_checked_before_any_body_is_read(engine):
    """The token was checked after the whole upload was received (and spooled): 32 MB per unauthenticated
    request."""
    app = create_app(engine, token="s3cret")
    reads = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * (1 << 20), "more_body": True}

    headers = {"content-type": "multipart/form-data; boundary=b", "content-length": str(30 << 20)}
    status, body = _call(app, "POST", "/zeroshot", headers, receive)
    assert status == 401 and reads == [] and "bearer token" in json.loads(body)["error"]
    status, _ = _call(app, "GET", "/openapi.json", {}, receive)  # the docs stay public
    assert status == 200


def test_item09_a_slow_partial_body_is_dropped(engine):
    app = create_app(engine, limits=ServeLimits(body_timeout_s=0.3))
    calls = []

    async def receive():
        calls.append(1)
        if len(calls) == 1:
            return {"type": "http.request", "body": b"--b\r\n", "more_body": True}
        await asyncio.sleep(3600)  # the client never sends the rest

    headers = {"content-type": "multipart/form-data; boundary=b"}
    status, body = _call(app, "POST", "/zeroshot", headers, receive)
    assert status == 408 and "not received within" in json.loads(body)["error"]


def test_item09_the_public_api_text_never_names_the_model(tiny_clip_dir, engine):
    with TestClient(create_app(engine)) as c:
        text = c.get("/openapi.json").text
    assert str(tiny_clip_dir) not in text and engine.model.name not in text


def test_item10_a_request_is_sized_from_its_headers_before_decoding(engine):
    """8 solid-colour 9,900 x 9,900 PNGs (each under the per-image limit) cost 4.3 GB and 39 s in one request."""
    big = png_header(9900, 9900)
    with TestClient(create_app(engine)) as c:
        r = c.post("/embed", files=[("files", (f"{i}.png", big, "image/png")) for i in range(8)])
    assert r.status_code == 413 and "per request" in r.json()["error"]


def test_item10_decoding_is_bounded_by_pixels_across_requests():
    from medvlkit.apps.serve.guards import PixelBudget

    budget, log = PixelBudget(100), []

    async def job(name: str, pixels: int, hold: float):
        async with budget.hold(pixels):
            log.append((name, "in", budget.used))
            await asyncio.sleep(hold)
            log.append((name, "out"))

    async def main():
        await asyncio.gather(job("a", 70, 0.05), job("b", 60, 0.01), job("c", 500, 0.01))

    asyncio.run(main())
    assert all(entry[2] <= 100 for entry in log if entry[1] == "in")  # never more than the budget at once
    assert [e[0] for e in log if e[1] == "in"][0] == "a" and ("b", "in", 60) in log


def test_item10_large_jpeg_uploads_decode_at_reduced_scale(engine):
    from medvlkit.data.io import read_image_bytes
    from medvlkit.engine.pixels import view_of

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1600, 1600, 3), dtype=np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    pre = engine.model.image_preprocessor
    drafted = view_of(data, pre, draft=pre.cfg.decode_size())
    assert engine.decode(data, fast_decode=True).equal(drafted)
    assert engine.decode(data).equal(pre.to_uint8(read_image_bytes(data)))  # and the full decode when asked
    with TestClient(create_app(engine)) as c:
        assert c.get("/info").json()["limits"]["fast_decode"] is True


def test_one_pixel_path_for_every_caller(tiny_clip_dir, engine, tmp_path):
    """embed, search queries, the server's uploads and explain read a file to the same uint8 view."""
    import torch

    from medvlkit import create_model, load_dataset
    from medvlkit.engine.features import embed_images
    from medvlkit.engine.pixels import ItemViews, view_of
    from medvlkit.tasks.search import query_vectors

    path = make_image(tmp_path / "imgs" / "a.png", size=(61, 47))
    model = create_model(f"hf:{tiny_clip_dir}")
    pre = model.image_preprocessor
    want = view_of(str(path), pre)
    assert ItemViews(load_dataset(tmp_path / "imgs"), [0], pre)[0][1].equal(want)
    assert engine.decode(path.read_bytes()).equal(want)
    emb = embed_images(model, load_dataset(tmp_path / "imgs"), cache=False, progress=False)
    np.testing.assert_allclose(query_vectors(model, images=[str(path)]), emb.vectors, atol=1e-6)
    with torch.inference_mode():
        direct = model.encode_image(pre.normalize(want[None])).numpy()
    np.testing.assert_allclose(direct, emb.vectors, atol=1e-6)
