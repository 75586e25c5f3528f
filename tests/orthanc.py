"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, on 127.0.0.1, with a throwaway storage
folder; and the Kermany chest X-rays as DICOM files with the tags a PACS indexes them by.

CI installs ``orthanc`` and ``orthanc-dicomweb`` (.ci/run) and sets ``MEDVLKIT_REQUIRE_ORTHANC=1`` so the tests fail
there when it is missing instead of skipping. ``benchmarks/dicomweb_throughput.py`` uses the same two helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PLUGIN_PLACES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7")
USER, PASSWORD = "medvlkit", "test-only-password"


@dataclass
class Orthanc:
    """A running Orthanc: its HTTP root, DICOMweb root and process."""

    url: str
    process: subprocess.Popen
    storage: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """An Orthanc REST call (its own API, not DICOMweb: loading and clearing the test data)."""
        import requests

        r = requests.request(method, f"{self.url}{path}", data=body, auth=(USER, PASSWORD), timeout=60)
        r.raise_for_status()
        return r.content

    def upload(self, files: list[Path]) -> None:
        """Store files byte for byte (Orthanc's REST ``POST /instances``)."""
        for f in files:
            self.rest("POST", "/instances", f.read_bytes())

    def clear(self) -> None:
        for patient in json.loads(self.rest("GET", "/patients")):
            self.rest("DELETE", f"/patients/{patient}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def orthanc_binary() -> tuple[str, str] | None:
    """(the Orthanc executable, its DICOMweb plugin), or None when either is missing."""
    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
    plugin = next((p for p in PLUGIN_PLACES if Path(p).is_file()), None)
    return (exe, plugin) if exe and plugin else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_orthanc(folder: Path, **settings) -> Orthanc:
    """Start Orthanc on a free port of 127.0.0.1 with basic authentication (``USER``/``PASSWORD``), storing into
    ``folder``; ``settings`` add to its configuration. Waits until it answers.

    Raises:
        RuntimeError: Orthanc is not installed, or did not answer within 60 s (its log is in the message).
    """
    import requests

    found = orthanc_binary()
    if found is None:
        raise RuntimeError("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc "
                           "orthanc-dicomweb)")
    exe, plugin = found
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {"Name": "medvlkit-tests", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [plugin],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpServerEnabled": True,
              "StorageCompression": False} | settings
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if requests.get(f"{url}/system", auth=(USER, PASSWORD), timeout=2).ok:
                return Orthanc(url, process, folder)
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")


def _uid(*parts: str) -> str:
    """A deterministic DICOM UID from ``parts`` (pydicom's root; the same file gives the same UIDs every run)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=list(parts)))


def kermany_patient(name: str) -> str:
    """The child a Kermany file belongs to: ``person12_virus_3.jpeg`` -> person12; ``IM-0005-0001.jpeg`` ->
    IM-0005; ``NORMAL2-IM-1427-0001.jpeg`` -> NORMAL2-IM-1427."""
    m = re.match(r"(person\d+)_", name) or re.match(r"((?:NORMAL2-)?IM-\d+)-", name)
    return m.group(1) if m else Path(name).stem


def to_dicom(image: Path, out_dir: Path, label: str) -> Path:
    """A Kermany chest film as a DICOM Computed Radiography file (8-bit MONOCHROME2, Explicit VR Little Endian):
    patient, study and series from the child's id, the SOP Instance UID from the file, Modality CR, body part CHEST,
    the class in the series description. Written as ``<SOPInstanceUID>.dcm``."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    pixels = np.asarray(Image.open(image).convert("L"))
    patient = kermany_patient(image.name)
    cr = "1.2.840.10008.5.1.4.1.1.1"
    sop = _uid("kermany", image.parent.name, image.name)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = cr, sop
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = cr, sop
    ds.PatientID, ds.PatientName = patient, patient.replace("-", "^")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid("kermany-study", patient), _uid("kermany-series", patient, label)
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, int(hashlib.sha1(image.name.encode()).hexdigest()[:6], 16)
    ds.StudyDate, ds.Modality, ds.BodyPartExamined = "20240115", "CR", "CHEST"
    ds.SeriesDescription = f"Kermany test {label}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{sop}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def kermany_dicom(data_root: Path, out_dir: Path, per_class: int) -> list[tuple[Path, str]]:
    """The first ``per_class`` films of each class of Kermany's test split as DICOM files (see :func:`to_dicom`):
    (file, class) pairs."""
    out = []
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((data_root / "chest_xray_pneumonia" / "test" / label).glob("*.jpeg"))[:per_class]
        out += [(to_dicom(f, out_dir / label, label), label) for f in files]
    return out


def require_orthanc() -> None:
    """Skip without Orthanc, or fail where ``MEDVLKIT_REQUIRE_ORTHANC=1`` (CI)."""
    import pytest

    if orthanc_binary() is None:
        if os.environ.get("MEDVLKIT_REQUIRE_ORTHANC") == "1":
            pytest.fail("MEDVLKIT_REQUIRE_ORTHANC=1 but Orthanc or its DICOMweb plugin is missing "
                        "(apt-get install orthanc orthanc-dicomweb)")
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
