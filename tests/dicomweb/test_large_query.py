"""A 10,000-instance query against a real Orthanc that cuts its query answers at 1,001 without saying so
(``LimitFindInstances``): medvlkit reads every page, notices the series answered short by the PACS's own counts,
reads them again one by one and lists all 10,000; a series the limit still cuts is a one-line error."""

from __future__ import annotations

import io
import zipfile

import pytest

from orthanc import PASSWORD, USER, require_orthanc, start_orthanc

SERIES, PER_SERIES, CAP = 100, 100, 1000


def _tiny_instances(study: str, n_series: int, per_series: int, modality: str) -> list[bytes]:
    """8x8 Secondary Capture files, built from one template by replacing fixed-length UIDs (pydicom per file would
    take ten times longer)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    root = "1.2.826.0.1.3680043.8.498.77"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{root}.3.{study}.9999999"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{root}.1.{study}", f"{root}.2.{study}.99999"
    ds.PatientID, ds.Modality = f"P{study}", modality
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(64)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    template = buf.getvalue()
    out = []
    for s in range(n_series):
        for i in range(per_series):
            sop, series = f".{study}.{1000000 + s * per_series + i}", f".{study}.{10000 + s}"
            out.append(template.replace(f".{study}.9999999".encode(), sop.encode())
                       .replace(f".{study}.99999".encode(), series.encode()))
    return out


@pytest.fixture(scope="module")
def capped_pacs(tmp_path_factory):
    require_orthanc()
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-capped"), LimitFindInstances=CAP, LimitFindResults=CAP)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        files = _tiny_instances("1", SERIES, PER_SERIES, "OT") + _tiny_instances("2", 1, CAP + 200, "XC")
        for i, data in enumerate(files):
            z.writestr(f"{i}.dcm", data)
    server.rest("POST", "/instances", buf.getvalue())  # Orthanc takes a ZIP of DICOM files in one request
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _credentials(monkeypatch):
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_PASSWORD", PASSWORD)


def test_a_10000_instance_query_is_read_whole_past_a_silent_server_limit(capped_pacs):
    import requests

    from medvlkit.data import load_dataset

    # the PACS really does cut the answer, and says nothing about it
    r = requests.get(f"{capped_pacs.dicomweb}/instances?Modality=OT", auth=(USER, PASSWORD), timeout=60)
    assert len(r.json()) == CAP + 1 and "Warning" not in r.headers
    ds = load_dataset(f"dicomweb:{capped_pacs.dicomweb}/instances?Modality=OT")
    assert len(ds) == len(set(ds.items)) == SERIES * PER_SERIES
    assert len(set(ds.attributes["series"])) == SERIES
    assert ds.meta["dicomweb"]["completeness"].startswith("checked")
    assert ds.items == sorted(ds.items)  # UID order, whatever order the PACS answered in


def test_a_series_the_limit_still_cuts_is_a_one_line_error(capped_pacs):
    from medvlkit.data import load_dataset
    from medvlkit.errors import MedvlkitError

    with pytest.raises(MedvlkitError, match=r"answered 1001 of the 1200 instances of series .*LimitFindInstances") \
            as err:
        load_dataset(f"dicomweb:{capped_pacs.dicomweb}/instances?Modality=XC")
    assert "\n" not in str(err.value)
    # a filter on an instance attribute cannot be checked against the series counts: said, not hidden
    ds = load_dataset(f"dicomweb:{capped_pacs.dicomweb}/instances?Modality=XC&InstanceNumber=")
    assert ds.meta["dicomweb"]["completeness"].startswith("not checked: a filter on instance attributes")
