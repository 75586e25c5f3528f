"""Issue 25, item 19 beyond the tampered-artifact corpus (tests/robustness/test_artifacts.py): a 12-bit JPEG DICOM
under --on-error skip, and pydicom's logged traceback. Failed on the main of 2026-12-06."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
from PIL import Image
from pydicom.uid import JPEGExtended12Bit

from helpers import make_image, write_dicom


def _twelve_bit_jpeg_dicom(path: Path) -> Path:
    buf = io.BytesIO()
    Image.new("L", (16, 16), 100).save(buf, format="JPEG")
    write_dicom(path, 16, 16, bits=8, jpeg_frame=buf.getvalue())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.save_as(path)
    return path


def test_item19_a_12_bit_jpeg_dicom_is_skipped_in_one_line(tiny_clip_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _twelve_bit_jpeg_dicom(folder / "twelve.dcm")
    make_image(folder / "good.png")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-m", "medvlkit", "embed", "--model", f"hf:{tiny_clip_dir}", "--data",
                           str(folder), "--on-error", "skip", "--workers", "0", "-q", "--no-cache", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "12-bit" in proc.stderr
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["metrics"]["n_images"] == 1 and [Path(s["file"]).name for s in res["skipped"]] == ["twelve.dcm"]
