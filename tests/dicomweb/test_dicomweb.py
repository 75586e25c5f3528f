"""DICOMweb against a real PACS: Orthanc with its DICOMweb plugin, started here on 127.0.0.1 (``tests/orthanc.py``),
loaded with Kermany test X-rays converted to DICOM and pydicom's scanner images. Queried, classified, written back
and read again through medvlkit's CLI, Python API and server; CI fails (not skips) without Orthanc."""

from __future__ import annotations

import csv
import json
import socket
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from medvlkit.apps.cli import main
from orthanc import PASSWORD, USER, kermany_dicom, require_orthanc, start_orthanc

PER_CLASS = 12
LITE = ["-m", "lite", "-q", "--workers", "0", "--bootstrap", "50"]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, data_root):
    """(Orthanc, [(DICOM file, class)]): 24 Kermany test films as DICOM, plus pydicom's CT and MR slices."""
    require_orthanc()
    from pydicom.data import get_testdata_file

    folder = tmp_path_factory.mktemp("orthanc")
    server = start_orthanc(folder)
    files = kermany_dicom(data_root, folder / "dicom", PER_CLASS)
    server.upload([f for f, _ in files] + [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm")])
    yield server, files
    server.stop()


@pytest.fixture(autouse=True)
def _credentials(monkeypatch):
    for var in ("MEDVLKIT_DICOMWEB_TOKEN",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_PASSWORD", PASSWORD)


def _labels(files: list[tuple[Path, str]], path: Path, key: str = "SOPInstanceUID") -> Path:
    import pydicom

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([key, "label"])
        rows = {}
        for file, label in files:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            rows[str(ds.get(key))] = label
        w.writerows(rows.items())
    return path


def _probs(predictions: Path) -> dict[str, dict[str, float]]:
    """SOP Instance UID (the last part of a file or item) -> class probabilities."""
    with open(predictions, newline="") as f:
        return {Path(r["file"].rsplit("/", 1)[-1]).stem if r["file"].endswith(".dcm") else r["file"].rsplit("/", 1)[-1]:
                {k[5:]: float(v) for k, v in r.items() if k.startswith("prob_")} for r in csv.DictReader(f)}


def _reports(server, modality: str = "SR") -> list:
    from medvlkit.data.dicomweb import client

    c = client(server.dicomweb)
    out = []
    for r in c.search_for_instances(search_filters={"Modality": modality}):
        out.append(c.retrieve_instance(r["0020000D"]["Value"][0], r["0020000E"]["Value"][0], r["00080018"]["Value"][0]))
    return out


@pytest.mark.data
def test_zeroshot_over_dicomweb_equals_the_files_on_disk_and_writes_back(pacs, tmp_path):
    from medvlkit.tasks.pacs import DISCLAIMER, read_report

    server, files = pacs
    labels = _labels(files, tmp_path / "labels.csv")
    web, disk = tmp_path / "web", tmp_path / "disk"
    assert main(["zeroshot", *LITE, "--data", f"dicomweb:{server.dicomweb}/instances?Modality=CR",
                 "--labels", str(labels), "--prompts", "pneumonia", "--out", str(web), "--stow"]) == 0
    assert main(["zeroshot", *LITE, "--data", str(files[0][0].parents[1]), "--prompts", "pneumonia",
                 "--out", str(disk)]) == 0
    a, b = _probs(web / "predictions.csv"), _probs(disk / "predictions.csv")
    assert len(a) == 2 * PER_CLASS and set(a) == set(b)
    assert max(abs(a[k][c] - b[k][c]) for k in a for c in a[k]) <= 1e-6
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (web, disk))
    assert ra["metrics"]["auroc"] == pytest.approx(rb["metrics"]["auroc"], abs=1e-9)
    assert ra["classnames"] == rb["classnames"] == ["NORMAL", "PNEUMONIA"]
    assert ra["n_skipped"] == 0
    # written back: one SR per instance, in the source's study, naming the model and saying it is no diagnosis
    stow = json.loads((web / "stow.json").read_text())
    assert stow["n_stored"] == 2 * PER_CLASS
    reports = {read_report(ds)["source"]: (ds, read_report(ds)) for ds in _reports(server)}
    assert set(reports) == set(a)
    for sop, (ds, rep) in reports.items():
        assert rep["probabilities"] == a[sop]  # the exact numbers of predictions.csv
        assert rep["model"] == "lite" and rep["prompts"] == "pneumonia" and rep["disclaimer"] == DISCLAIMER
        assert rep["result"] == ra["identity"]["sha256"]
        evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
        assert ds.StudyInstanceUID == evidence.StudyInstanceUID and ds.Modality == "SR"
    # stored again: the same objects (UIDs from the run's identity and the source), nothing added
    assert main(["zeroshot", *LITE, "--data", f"dicomweb:{server.dicomweb}/instances?Modality=CR",
                 "--labels", str(labels), "--prompts", "pneumonia", "--out", str(tmp_path / "again"), "--stow"]) == 0
    assert len(_reports(server)) == 2 * PER_CLASS
    # a query that now also finds the reports lists them as not images, and scores the images
    from medvlkit.data import load_dataset

    ds = load_dataset(f"dicomweb:{server.dicomweb}")
    assert len(ds) == 2 * PER_CLASS + 2
    assert sum("not an image" in why for _, why in ds.skipped) == 2 * PER_CLASS


@pytest.mark.data
def test_scanner_images_over_dicomweb_equal_their_files(pacs, tmp_path):
    """pydicom's CT (signed 16-bit, rescaled, windowed) and MR slices: the same answers from the PACS as from disk."""
    from pydicom.data import get_testdata_file

    server, _ = pacs
    for modality, name in (("CT", "CT_small.dcm"), ("MR", "MR_small.dcm")):
        web, disk = tmp_path / f"web-{modality}", tmp_path / f"disk-{modality}"
        assert main(["zeroshot", *LITE, "--data", f"dicomweb:{server.dicomweb}/series?Modality={modality}",
                     "--prompts", "modality", "--out", str(web)]) == 0
        assert main(["zeroshot", *LITE, "--data", get_testdata_file(name), "--prompts", "modality",
                     "--out", str(disk)]) == 0
        (a,), (b,) = _probs(web / "predictions.csv").values(), _probs(disk / "predictions.csv").values()
        assert a.keys() == b.keys() and max(abs(a[c] - b[c]) for c in a) <= 1e-6


@pytest.mark.data
def test_labels_by_study_with_a_split_and_what_is_left_out(pacs, tmp_path):
    import pydicom

    from medvlkit.data import load_dataset
    from medvlkit.errors import MedvlkitError, NoSplitsError

    server, files = pacs
    path = tmp_path / "studies.csv"
    rows = {}
    for i, (file, label) in enumerate(files):
        study = str(pydicom.dcmread(file, stop_before_pixels=True).StudyInstanceUID)
        rows[study] = (label, "test" if i % 2 else "val")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["StudyInstanceUID", "label", "split"])
        w.writerows([s, lab, sp] for s, (lab, sp) in rows.items())
        w.writerow(["1.2.3.4.5", "NORMAL", "test"])  # a study the PACS does not hold
    ds = load_dataset(f"dicomweb:{server.dicomweb}/instances?Modality=CR", split="test", labels=str(path))
    test_studies = {s for s, (_, sp) in rows.items() if sp == "test"}
    assert set(ds.attributes["study"]) == test_studies and ds.classnames == ["NORMAL", "PNEUMONIA"]
    for i, study in enumerate(ds.attributes["study"]):
        assert ds.classnames[int(np.argmax(ds.labels[i]))] == rows[study][0]
    assert ("StudyInstanceUID=1.2.3.4.5", "a row of studies.csv whose instances the query did not find") in ds.skipped
    everything = load_dataset(f"dicomweb:{server.dicomweb}", labels=str(path))
    assert sum("no row in studies.csv" in why for _, why in everything.skipped) == 2  # the CT and MR slices
    with pytest.raises(NoSplitsError, match="DICOMweb data has no splits"):
        load_dataset(f"dicomweb:{server.dicomweb}", split="test")
    with pytest.raises(MedvlkitError, match="does not use"):
        load_dataset(f"dicomweb:{server.dicomweb}", path_column="x")


@pytest.mark.data
def test_gate_and_explain_write_back(pacs, tmp_path):
    import pydicom

    from medvlkit.tasks.pacs import read_report

    server, files = pacs
    series = str(pydicom.dcmread(files[0][0], stop_before_pixels=True).SeriesInstanceUID)
    study = str(pydicom.dcmread(files[0][0], stop_before_pixels=True).StudyInstanceUID)
    data = f"dicomweb:{server.dicomweb}/studies/{study}/series/{series}"
    from medvlkit.data import load_dataset

    assert load_dataset(f"dicomweb:{server.dicomweb}/series/{series}").items == load_dataset(data).items
    assert main(["gate", *LITE[:-2], "--data", data, "--out", str(tmp_path / "gate"), "--stow"]) == 0
    with open(tmp_path / "gate" / "gate.csv", newline="") as f:
        gate = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    result = json.loads((tmp_path / "gate" / "result.json").read_text())
    got = [read_report(ds) for ds in _reports(server) if read_report(ds).get("task") == "gate"]
    assert {r["source"] for r in got} == set(gate)
    for r in got:
        assert r["p_medical"] == float(gate[r["source"]]["p_medical"])
        assert r["verdict"] == gate[r["source"]]["verdict"] and r["threshold"] == result["threshold"]
    assert main(["explain", *LITE[:-2], "--data", data, "--prompts", "pneumonia", "--limit", "1",
                 "--out", str(tmp_path / "explain"), "--stow"]) == 0
    captures = _reports(server, "OT")
    explained = json.loads((tmp_path / "explain" / "result.json").read_text())["images"][0]
    assert len(captures) == len(explained["overlays"]) == 2
    from PIL import Image

    overlay = np.asarray(Image.open(tmp_path / "explain" / explained["overlays"]["normal"]).convert("RGB"))
    first = next(c for c in captures if "normal" in c.SeriesDescription)
    assert first.SourceImageSequence[0].ReferencedSOPInstanceUID == explained["file"].rsplit("/", 1)[-1]
    assert np.array_equal(first.pixel_array, overlay) and "Not a diagnosis" in first.ImageComments


def test_stow_refuses_data_that_is_not_from_a_pacs(tmp_path):
    from helpers import make_image

    make_image(tmp_path / "in" / "a.png", seed=1)
    assert main(["zeroshot", *LITE, "--data", str(tmp_path / "in"), "--prompts", "pneumonia", "--stow",
                 "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.data
def test_serve_reads_a_study_from_the_pacs(pacs, lite, tmp_path):
    import pydicom
    from fastapi.testclient import TestClient

    from medvlkit.apps.serve.app import create_app
    from medvlkit.apps.serve.engine import ServeEngine

    server, files = pacs
    first = pydicom.dcmread(files[0][0], stop_before_pixels=True)
    engine = ServeEngine(lite, ["pneumonia"], None, cache=False)
    assert main(["zeroshot", *LITE, "--data", f"dicomweb:{server.dicomweb}/studies/{first.StudyInstanceUID}",
                 "--prompts", "pneumonia", "--out", str(tmp_path / "cli")]) == 0
    cli = _probs(tmp_path / "cli" / "predictions.csv")
    with TestClient(create_app(engine, pacs=server.dicomweb)) as c:
        r = c.post("/zeroshot", data={"study_uid": str(first.StudyInstanceUID), "prompts": "pneumonia"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert {x["file"] for x in body["results"]} == set(cli)
        for x in body["results"]:
            assert max(abs(x["probabilities"][k] - v) for k, v in cli[x["file"]].items()) <= 1e-6
        assert c.post("/zeroshot", data={"study_uid": "1.2.3.999"}).status_code == 404
        assert c.post("/zeroshot", data={"study_uid": "not-a-uid"}).status_code == 400
        assert c.post("/zeroshot", data={}).status_code == 400
    with TestClient(create_app(engine)) as c:
        assert c.post("/zeroshot", data={"study_uid": str(first.StudyInstanceUID)}).status_code == 409


class _BadProxy:
    """A proxy in front of Orthanc that answers wrongly on purpose, for the instances whose UID ends in an even
    digit: ``mode`` = ``garbage`` (a retrieval answered with a body that is not DICOM) or ``drop`` (the connection
    closed halfway through an answer; with ``drop_queries``, every answer) or ``no-offset`` (QIDO's offset ignored)."""

    def __init__(self, target: str, mode: str) -> None:
        import http.server

        import requests

        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path
                if proxy.mode == "no-offset":  # a server that ignores QIDO's offset: every page is the first
                    parts = urllib.parse.urlsplit(path)
                    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "offset"]
                    path = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
                upstream = requests.get(target + path, headers={k: v for k, v in self.headers.items()
                                                                if k.lower() != "host"}, timeout=30)
                body, ctype = upstream.content, upstream.headers.get("Content-Type", "")
                retrieval = "/instances/" in self.path and int(self.path[-1]) % 2 == 0  # about half of them
                if proxy.mode == "garbage" and retrieval:
                    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n<html>oops</html>\r\n--b--"
                    ctype = 'multipart/related; type="application/dicom"; boundary=b'
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if proxy.mode == "drop" and (retrieval or proxy.drop_queries):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.mode, self.drop_queries = mode, False
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.data
def test_bad_pacs_answers_are_one_line_errors_or_listed(pacs, tmp_path, monkeypatch, capsys):
    server, _ = pacs
    query = "/instances?Modality=CR"
    base = ["zeroshot", *LITE, "--prompts", "pneumonia"]
    monkeypatch.delenv("MEDVLKIT_DICOMWEB_PASSWORD")
    monkeypatch.delenv("MEDVLKIT_DICOMWEB_USER")
    assert main([*base, "--data", f"dicomweb:{server.dicomweb}{query}", "--out", str(tmp_path / "a")]) == 2
    assert "refused access (HTTP 401)" in capsys.readouterr().err
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_PASSWORD", "wrong")
    assert main([*base, "--data", f"dicomweb:{server.dicomweb}{query}", "--out", str(tmp_path / "b")]) == 2
    assert "check the credentials" in capsys.readouterr().err
    monkeypatch.setenv("MEDVLKIT_DICOMWEB_PASSWORD", PASSWORD)
    assert main([*base, "--data", f"dicomweb:{server.url}/no-such-root{query}", "--out", str(tmp_path / "c")]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert main([*base, "--data", f"dicomweb:http://{USER}:{PASSWORD}@127.0.0.1:1/dicom-web",
                 "--out", str(tmp_path / "d")]) == 2
    assert "never put credentials on the command line" in capsys.readouterr().err
    from orthanc import free_port

    assert main([*base, "--data", f"dicomweb:http://127.0.0.1:{free_port()}/dicom-web", "--out",
                 str(tmp_path / "e")]) == 2
    assert "cannot connect" in capsys.readouterr().err
    for mode, words in (("garbage", "not a DICOM file"), ("drop", "dropped")):
        proxy = _BadProxy(server.url, mode)
        try:
            data = f"dicomweb:{proxy.url}{query}"
            capsys.readouterr()
            assert main([*base, "--data", data, "--out", str(tmp_path / f"{mode}-fail")]) == 2
            errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
            assert len(errors) == 1 and words in errors[0], errors
            # --on-error skip: the instances not read are listed, nothing dropped silently
            assert main([*base, "--data", data, "--on-error", "skip", "--out", str(tmp_path / f"{mode}-skip")]) == 0
            res = json.loads((tmp_path / f"{mode}-skip" / "result.json").read_text())
            bad = {f for f in _probs_of_all(server) if int(f[-1]) % 2 == 0}
            assert res["n_images"] + res["n_skipped"] == 2 * PER_CLASS and res["n_skipped"] == len(bad) > 0
            assert {s["file"].rsplit("/", 1)[-1] for s in res["skipped"]} == bad
            if mode == "drop":
                proxy.drop_queries = True
                assert main([*base, "--data", data, "--out", str(tmp_path / "drop-query")]) == 2
                errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
                assert len(errors) == 1 and "dropped mid-answer" in errors[0], errors
        finally:
            proxy.close()
    proxy = _BadProxy(server.url, "no-offset")
    try:
        from medvlkit.data import load_dataset
        from medvlkit.errors import MedvlkitError

        with pytest.raises(MedvlkitError, match="does not page its answers"):
            load_dataset(f"dicomweb:{proxy.url}{query}")
    finally:
        proxy.close()
    # the same query through Orthanc itself now reads everything: a rerun resumes
    assert main([*base, "--data", f"dicomweb:{server.dicomweb}{query}", "--out", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "result.json").read_text())["n_images"] == 2 * PER_CLASS


def _probs_of_all(server) -> list[str]:
    """The SOP Instance UIDs of the CR films on the PACS."""
    from medvlkit.data.dicomweb import parse_spec, query_instances

    return [str(r["sop"]) for r in query_instances(parse_spec(f"dicomweb:{server.dicomweb}/instances?Modality=CR"))]
