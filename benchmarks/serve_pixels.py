"""Pixels within the per-image limit against ``medvlkit serve`` (run by hand): peak memory and time.

Issue 25, item 10: eight solid-colour 9,900 x 9,900 PNGs (about 2.3 MiB of body, each image under the 100-million
pixel limit) in one ``/embed`` request cost 4.3 GB of server memory and 39 s. This starts ``medvlkit serve`` as a
subprocess on a free port (``--model``, default ``lite``) for each request below, warms it up with one small image,
sends the request, and prints the HTTP status, the seconds it took, and the server's peak resident memory (VmHWM
from /proc) after the warm-up and after the request.

- ``eight-large``: the 8 x 9,900 x 9,900 PNGs in one request;
- ``one-large``: one 9,900 x 9,900 PNG;
- ``large-jpeg``: one 6,000 x 6,000 JPEG (decoded at reduced scale where the server allows it).

Usage: python benchmarks/serve_pixels.py [--model lite] [--side 9900] [--n 8]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import free_port, proc_status_mb  # noqa: E402


def _peak_mb(pid: int) -> float:
    return proc_status_mb(pid, "VmHWM")


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(port: int, files: list[tuple[str, bytes]], timeout: float = 600) -> tuple[int, float]:
    body, ctype = _multipart(files)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/embed", data=body, headers={"Content-Type": ctype})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.perf_counter() - start


def _image(side: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--side", type=int, default=9900)
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    png, jpeg = _image(args.side, "PNG"), _image(6000, "JPEG")
    small = _image(64, "PNG")
    rows = {}
    for name, files in (("eight-large", [(f"{i}.png", png) for i in range(args.n)]),
                        ("one-large", [("one.png", png)]), ("large-jpeg", [("big.jpg", jpeg)])):
        rows[name] = _one_server(args.model, files, small)
        print(name, rows[name], flush=True)
    print(json.dumps({"body_mb_of_eight": round(len(png) * args.n / 2 ** 20, 2), **rows}, indent=1))


def _one_server(model: str, files: list[tuple[str, bytes]], small: bytes) -> dict:
    """A fresh server: warm-up, one request; status, seconds and peak memory before and after it."""
    port = free_port()
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, MEDVLKIT_CACHE=cache)
        server = subprocess.Popen([sys.executable, "-m", "medvlkit", "serve", "--model", model, "--port", str(port),
                                   "--prompts", "pneumonia"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.5)
            _post(port, [("warm.png", small)])
            warm = _peak_mb(server.pid)
            status, seconds = _post(port, files)
            return {"status": status, "seconds": round(seconds, 2), "peak_mb_warm": round(warm),
                    "peak_mb_after": round(_peak_mb(server.pid))}
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
