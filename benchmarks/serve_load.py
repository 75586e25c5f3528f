"""Load and faults against ``medvlkit serve`` (run by hand): latency, throughput, errors, memory.

In one run, on real Kermany chest X-rays from $MEDVLKIT_DATA (test split):
1. the ``embed`` baseline: ``embed_images`` over the same images in this process (cache off, ``--workers``);
2. ``medvlkit serve`` started as a subprocess on a free port, warmed up; its RSS read from /proc;
3. idle latency: one client, ``--idle`` single-image ``/zeroshot`` requests one after another;
4. load: ``--clients`` threads, each sending ``--per-client`` single-image ``/zeroshot`` requests back to back, with
   ``--bad`` of the requests (default 10%) replaced by bad uploads (random bytes, a truncated JPEG, text, an empty
   file, a decompression-bomb PNG header, a body over the upload limit);
5. the server's RSS again, and its batching counters.

It prints p50/p95/p99 latency, served images/s and its ratio to the ``embed`` rate, responses by status, whether
every bad upload got a 4xx JSON error, and the RSS before/after. The client threads share the machine's cores with
the server: on a 2-core machine that costs the server some of its rate.

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/serve_load.py [--model lite] [--clients 8] [--per-client 50]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import free_port, png_header, proc_status_mb  # noqa: E402  (the tests' generators: nothing downloaded)


def _rss_mb(pid: int) -> float:
    return proc_status_mb(pid, "VmRSS")


def bad_uploads(jpeg: bytes, limit_mb: float) -> dict[str, bytes]:
    """Named bad files: each must get a 4xx JSON error."""
    rng = np.random.default_rng(0)
    return {"random bytes": rng.bytes(20_000), "truncated jpeg": jpeg[: len(jpeg) // 3], "text": b"not an image\n" * 50,
            "empty": b"", "pixel bomb": png_header(60000, 60000), "over the upload limit": b"\xff\xd8\xff" + b"0" * int(
                (limit_mb + 1) * 2 ** 20)}


def percentiles(ms: list[float]) -> str:
    p = np.percentile(ms, [50, 95, 99])
    return f"p50 {p[0]:.0f} ms, p95 {p[1]:.0f} ms, p99 {p[2]:.0f} ms (n={len(ms)})"


def main() -> None:
    import httpx

    from medvlkit import create_model, load_dataset
    from medvlkit.engine.features import embed_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=50)
    ap.add_argument("--idle", type=int, default=100, help="sequential requests for the idle latency")
    ap.add_argument("--bad", type=float, default=0.10, help="share of bad uploads in the load")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 2), help="embed baseline's workers")
    ap.add_argument("--max-upload-mb", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2, help="load rounds (RSS is read after each: growth = a leak)")
    args = ap.parse_args()

    data = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")) / "chest_xray_pneumonia" / "test"
    files = sorted(data.rglob("*.jpeg"))
    n = args.clients * args.per_client
    files = [files[i % len(files)] for i in range(n)]
    images = [f.read_bytes() for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cxr"
        folder.mkdir()
        for i, f in enumerate(sorted(set(files))):
            (folder / f"{i:04d}_{f.name}").symlink_to(f.resolve())
        model = create_model(args.model)
        ds = load_dataset(folder)
        start = time.perf_counter()
        embed_images(model, ds, cache=False, num_workers=args.workers, progress=False)
        embed_rate = len(ds) / (time.perf_counter() - start)
        del model
    print(f"embed baseline: {embed_rate:.1f} img/s ({len(ds)} images, --workers {args.workers}, cache off)")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "medvlkit", "serve", "--model", args.model, "--port", str(port),
                               "--prompts", "pneumonia", "--max-upload-mb", str(args.max_upload_mb)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        client = httpx.Client(base_url=url, timeout=120)

        def zeroshot(data: bytes, name: str = "x.jpeg") -> tuple[int, float, dict]:
            t = time.perf_counter()
            r = client.post("/zeroshot", files=[("files", (name, data, "image/jpeg"))], data={"prompts": "pneumonia"})
            return r.status_code, 1000 * (time.perf_counter() - t), r.json()

        for data in images[:10]:  # warm-up
            zeroshot(data)
        rss_before = _rss_mb(server.pid)
        idle = [zeroshot(images[i % len(images)])[1] for i in range(args.idle)]
        print(f"idle single-image /zeroshot: {percentiles(idle)}")

        bad = bad_uploads(images[0], args.max_upload_mb)
        rng = random.Random(0)
        plan = [[("good", images[c * args.per_client + i]) if rng.random() >= args.bad else
                 ("bad", rng.choice(list(bad))) for i in range(args.per_client)] for c in range(args.clients)]
        results: list[tuple[str, str, int, float, dict]] = []
        lock = threading.Lock()

        def run_client(jobs):
            local = httpx.Client(base_url=url, timeout=120)
            for kind, item in jobs:
                data = item if kind == "good" else bad[item]
                t = time.perf_counter()
                r = local.post("/zeroshot", files=[("files", ("x.jpeg", data, "image/jpeg"))],
                               data={"prompts": "pneumonia"})
                ms = 1000 * (time.perf_counter() - t)
                try:
                    body = r.json()
                except ValueError:
                    body = {}
                with lock:
                    results.append((kind, "" if kind == "good" else item, r.status_code, ms, body))

        rss_rounds = []
        for _ in range(args.rounds):  # the last round's requests are the ones reported
            results.clear()
            threads = [threading.Thread(target=run_client, args=(jobs,)) for jobs in plan]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            rss_rounds.append(_rss_mb(server.pid))
        good = [r for r in results if r[0] == "good"]
        bads = [r for r in results if r[0] == "bad"]
        served = sum(1 for r in good if r[2] == 200)
        info = client.get("/info").json()["batching"]
    finally:
        server.terminate()
        server.wait(timeout=30)

    rate = served / wall
    print(f"load (round {args.rounds} of {args.rounds}): {args.clients} clients x {args.per_client} requests, "
          f"{len(bads)} bad uploads, {wall:.1f} s")
    print(f"  good images: {served}/{len(good)} answered 200; {percentiles([r[3] for r in good])}")
    print(f"  served {rate:.1f} img/s = {rate / embed_rate:.2f}x the embed baseline ({embed_rate:.1f} img/s)")
    print(f"  responses by status: {dict(sorted(Counter(r[2] for r in results).items()))}")
    by_kind = {}
    for _, kind, status, _, _ in bads:
        by_kind.setdefault(kind, Counter())[status] += 1
    ok_bad = all(400 <= r[2] < 500 and isinstance(r[4].get("error"), str) for r in bads)
    print(f"  bad uploads by kind and status: { {k: dict(v) for k, v in by_kind.items()} }; all 4xx + JSON: {ok_bad}")
    print(f"  server RSS: {rss_before:.0f} MB after warm-up and the idle requests; after each load round: "
          + ", ".join(f"{r:.0f} MB" for r in rss_rounds))
    print(f"  batching: {json.dumps(info)}")


if __name__ == "__main__":
    main()
