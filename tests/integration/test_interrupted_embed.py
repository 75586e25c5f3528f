"""Nothing computed is lost when `embed` stops: an unreadable file, Ctrl-C or SIGKILL part-way, then a rerun takes
everything finished before the stop from the cache and ends with the same vectors as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import make_image
from medvlkit.apps.cli import main


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for i in range(400):
        make_image(root / f"img{i:04d}.png", seed=i, size=(48, 48))
    return root


def _shard_keys(cache) -> int:
    total = 0
    for shard in cache.rglob("shard-*.npz"):
        with np.load(shard) as z:
            total += len(z["keys"])
    return total


def _embed_cmd(model, data, out):
    return [sys.executable, "-m", "medvlkit", "embed", "--model", model, "--data", str(data), "--batch-size", "1",
            "--workers", "0", "--quiet", "--out", str(out)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_embed_keeps_its_work(tiny_clip_dir, many_images, tmp_path, sig):
    env = dict(os.environ, MEDVLKIT_CACHE=str(tmp_path / "cache"), MEDVLKIT_CACHE_FLUSH_SECONDS="0")
    proc = subprocess.Popen(_embed_cmd(f"hf:{tiny_clip_dir}", many_images, tmp_path / "a"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _shard_keys(tmp_path / "cache") < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 2 and "interrupted" in err and "Traceback" not in err
    kept = _shard_keys(tmp_path / "cache")
    assert 20 <= kept < 400
    assert subprocess.run(_embed_cmd(f"hf:{tiny_clip_dir}", many_images, tmp_path / "b"), env=env).returncode == 0
    res = json.loads((tmp_path / "b" / "result.json").read_text())
    assert res["n_cached"] == kept and res["metrics"]["n_images"] == 400
    fresh = tmp_path / "fresh"
    assert main(["embed", "--model", f"hf:{tiny_clip_dir}", "--data", str(many_images), "--no-cache", "--quiet",
                 "--workers", "0", "--out", str(fresh)]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "b" / "embeddings.npy"), np.load(fresh / "embeddings.npy"),
                               atol=1e-6)


def test_a_broken_file_keeps_the_images_before_it(tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLKIT_CACHE", str(tmp_path / "cache"))
    for i in range(30):
        make_image(tmp_path / "d" / f"a{i:02d}.png", seed=i)
    (tmp_path / "d" / "m_broken.png").write_bytes(b"not a png")
    for i in range(6):
        make_image(tmp_path / "d" / f"z{i:02d}.png", seed=100 + i)
    base = ["embed", "--model", f"hf:{tiny_clip_dir}", "--data", str(tmp_path / "d"), "--batch-size", "4",
            "--workers", "0", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 2
    assert main(base + ["--on-error", "skip", "--out", str(tmp_path / "b")]) == 0
    res = json.loads((tmp_path / "b" / "result.json").read_text())
    assert res["n_cached"] >= 28 and res["n_skipped"] == 1 and res["metrics"]["n_images"] == 36
