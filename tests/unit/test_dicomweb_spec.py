"""The dicomweb: data spec, item ids and credentials (no PACS needed; tests/dicomweb runs them against Orthanc)."""

import pytest

from medvlkit.data.dicomweb import (
    InstanceRef,
    credentials,
    is_image_class,
    parse_item,
    parse_spec,
)
from medvlkit.data.items import is_npz_item, item_file, item_stamp
from medvlkit.errors import MedvlkitError

ROOT = "http://pacs:8042/dicom-web"


@pytest.mark.parametrize("spec, level, study, series, filters", [
    (f"dicomweb:{ROOT}", "instances", None, None, ()),
    (f"dicomweb:{ROOT}/", "instances", None, None, ()),
    (f"dicomweb:{ROOT}/instances?Modality=CR&StudyDate=20240101-20240131", "instances", None, None,
     (("Modality", "CR"), ("StudyDate", "20240101-20240131"))),
    (f"dicomweb:{ROOT}/studies?ModalitiesInStudy=MR", "studies", None, None, (("ModalitiesInStudy", "MR"),)),
    (f"dicomweb:{ROOT}/series?Modality=US", "series", None, None, (("Modality", "US"),)),
    (f"dicomweb:{ROOT}/studies/1.2.3", "instances", "1.2.3", None, ()),
    (f"dicomweb:{ROOT}/studies/1.2.3/series", "series", "1.2.3", None, ()),
    (f"dicomweb:{ROOT}/studies/1.2.3/series/4.5", "instances", "1.2.3", "4.5", ()),
    (f"dicomweb:{ROOT}/studies/1.2.3/series/4.5/instances", "instances", "1.2.3", "4.5", ()),
])
def test_spec_levels(spec, level, study, series, filters):
    q = parse_spec(spec)
    assert (q.root, q.level, q.study, q.series, q.filters) == (ROOT, level, study, series, filters)


@pytest.mark.parametrize("spec, words", [
    ("dicomweb:ftp://pacs/dicom-web", "expected dicomweb:http"),
    ("dicomweb:http://alice:pw@pacs/dicom-web", "never put credentials on the command line"),
    (f"dicomweb:{ROOT}/studies/abc", "cannot read the path"),
    (f"dicomweb:{ROOT}/instances/1.2.3", "cannot read the path"),
    (f"dicomweb:{ROOT}?Modality=CR&Modality=MR", "given twice"),
    (f"dicomweb:{ROOT}?limit=10", "leave out limit/offset"),
])
def test_bad_specs_are_refused(spec, words):
    with pytest.raises(MedvlkitError, match=words):
        parse_spec(spec)


def test_a_root_below_a_path_and_an_ipv6_host_round_trip():
    ref = InstanceRef("http://[::1]:8042/pacs/dicom-web", "1.2", "3.4", "5.6")
    assert parse_item(ref.item) == ref
    assert not is_npz_item(ref.item) and item_file(ref.item) == ref.item  # '::' of the host is not an npz member
    assert item_stamp(ref.item) == "sop-uid"
    assert parse_spec("dicomweb:http://[::1]:8042/pacs/dicom-web/studies/1.2").root == "http://[::1]:8042/pacs/dicom-web"


def test_credentials_come_from_the_environment_whole(monkeypatch):
    for var in ("MEDVLKIT_DICOMWEB_TOKEN", "MEDVLKIT_DICOMWEB_USER", "MEDVLKIT_DICOMWEB_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert credentials() == {}
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_TOKEN", "t")
    assert credentials() == {"token": "t"}
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_USER", "u")
    with pytest.raises(MedvlkitError, match="not both"):
        credentials()
    monkeypatch.delenv("MEDVLKIT_DICOMWEB_TOKEN")
    with pytest.raises(MedvlkitError, match="go together"):
        credentials()
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_PASSWORD", "p")
    assert credentials() == {"user": "u", "password": "p"}


def test_reports_and_documents_are_not_images():
    assert not is_image_class("1.2.840.10008.5.1.4.1.1.88.33")  # Comprehensive SR
    assert not is_image_class("1.2.840.10008.5.1.4.1.1.104.1")  # Encapsulated PDF
    assert is_image_class("1.2.840.10008.5.1.4.1.1.1") and is_image_class("1.2.840.10008.5.1.4.1.1.481.1")
    assert is_image_class(None)  # unknown: tried, and reported if it is not an image


def test_a_series_without_its_study_is_searched_by_filter():
    q = parse_spec(f"dicomweb:{ROOT}/series/4.5")
    assert (q.level, q.study, q.series) == ("instances", None, "4.5")
