"""`medvlkit serve` as a user starts it (a subprocess on a free port), driven in a real headless Chromium: upload a
real chest X-ray, read the verdict, the bars and the similar cases, search by text. CI installs Debian's chromium and
sets MEDVLKIT_REQUIRE_BROWSER=1 so this runs there instead of skipping."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port
from medvlkit.apps.cli import main

from .conftest import cxr_files

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    path = os.environ.get("MEDVLKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None or pytest.importorskip("playwright.sync_api") is None:
        if os.environ.get("MEDVLKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("MEDVLKIT_REQUIRE_BROWSER=1 but no chromium found (apt-get install chromium)")
        pytest.skip("no chromium: apt-get install chromium")
    return path


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the server did not answer {url} within {seconds} s")


@pytest.fixture
def server(data_root, tmp_path):
    """`medvlkit serve` with lite and an index of 6 real X-rays in class folders: (base url, the indexed folder)."""
    folder = tmp_path / "cxr"
    for p in cxr_files(data_root, 6):
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / p.parent.name / p.name).symlink_to(p)
    assert main(["index", "--data", str(folder), "--out", str(tmp_path / "index"), "-q", "--workers", "0"]) == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medvlkit", "serve", "--index", str(tmp_path / "index"),
                             "--prompts", "pneumonia", "--prompts", "modality", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}", folder, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_page_reads_a_real_xray(server, data_root, tmp_path):
    from playwright.sync_api import sync_playwright

    url, folder, proc = server
    xray = data_root / "chest_xray_pneumonia" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#prompt-set option').length == 2")
        assert "lite" in page.inner_text("#model") and "index of 6 images" in page.inner_text("#model")
        page.set_input_files("#file", str(xray))
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        gate = page.inner_text("#gate")
        assert gate.startswith("Medical image") and "P(medical)" in gate
        bars = page.query_selector_all("#bars .row")
        assert [b.get_attribute("data-cls") for b in bars] in (["pneumonia", "normal"], ["normal", "pneumonia"])
        values = [float(b.query_selector(".value").inner_text().rstrip("%")) for b in bars]
        assert abs(sum(values) - 100) < 0.2 and values[0] >= values[1]
        for bar, value in zip(bars, values):  # the bars are drawn to scale
            fill, track = bar.query_selector(".fill").bounding_box(), bar.query_selector(".track").bounding_box()
            assert fill["height"] > 5 and fill["width"] == pytest.approx(track["width"] * value / 100, abs=2)
        assert "pneumonia" in page.inner_text("#set-name")
        page.wait_for_function("document.getElementById('heatmap').naturalWidth == 224", timeout=60_000)
        assert "gradcam" in page.inner_text("#heatmap-caption")
        page.wait_for_function("[...document.querySelectorAll('#similar img')].filter(i => i.naturalWidth > 0)"
                               ".length == 6", timeout=60_000)
        for caption in page.query_selector_all("#similar figcaption"):  # each case by its file and its label
            name, _, label = caption.inner_text().split(" · ")[:3]
            assert name.split("/")[0] == label and name.endswith(".jpeg") and label in ("NORMAL", "PNEUMONIA")
        page.fill("#query", "pneumonia")
        page.click("#search-form button")
        page.wait_for_function("[...document.querySelectorAll('#search-results img')].filter(i => i.naturalWidth > 0)"
                               ".length == 6", timeout=60_000)
        shot = Path(os.environ.get("MEDVLKIT_SCREENSHOT_DIR", tmp_path)) / "serve-page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    with urllib.request.urlopen(f"{url}/info") as r:  # the page's requests went through the batcher
        assert json.load(r)["batching"]["images"] >= 1


def test_serve_refuses_an_open_network_bind(capsys):
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--token" in capsys.readouterr().err
