"""Results back to the PACS the images came from (``--stow``): what a finished run wrote, as DICOM, with STOW-RS.

- ``zeroshot``: one Comprehensive SR per scored instance (``predictions.csv``): each class's probability as a NUM
  item (its exact float64 in Floating Point Value, the 16-character decimal in Numeric Value), the predicted
  class(es), the mode and the classes the softmax ran over;
- ``gate``: one SR per instance (``gate.csv``): P(medical), the verdict and the threshold with its source;
- ``explain``: one Secondary Capture per heatmap overlay (``result.json``'s images), RGB, referencing its source.

Every object joins the source's study (patient and study attributes copied from the source instance) in a new
series, references the source instance (SOP class and instance UID, and the evidence sequence), names the model
(and its weights), the prompt set, medvlkit's version and the run's result identity, and says in plain words that
it is research output and not a diagnosis. Its UIDs are derived from the run's result identity and the source
instance, so storing the same run twice stores the same objects, and another run's never collide with them.
The numbers come from the files the run wrote, so what the PACS holds is what ``predictions.csv`` says;
:func:`read_report` reads an SR back.
"""

from __future__ import annotations

import csv
import datetime
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvlkit.data.dicomweb import InstanceRef, fetch_instance, is_dicomweb, parse_item, store
from medvlkit.errors import MedvlkitError

DISCLAIMER = ("Research output of a machine-learning model (medvlkit). Not a diagnosis and not for clinical use: "
              "it has not been verified by a clinician.")
SCHEME = "99MEDVLKIT"  # a local coding scheme ("99" prefix: PS3.16 8.2)
COMPREHENSIVE_SR, SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"
STOW_TASKS = ("zeroshot", "gate", "explain")
CODES = {"report": "medvlkit model output", "disclaimer": "Disclaimer", "model": "Model", "weights": "Model weights",
         "prompts": "Prompt set", "version": "medvlkit version", "task": "Task", "mode": "Classification mode",
         "over": "Classes compared", "result": "Result identity", "source": "Source image",
         "probability": "Probability", "class": "Class", "predicted": "Predicted class", "p_medical":
         "Probability medical image", "threshold": "Threshold", "threshold_source": "Threshold source",
         "verdict": "Gate verdict"}


def _code(key: str, meaning: str | None = None) -> Any:
    from pydicom.dataset import Dataset

    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator = f"MVK{key.upper()}"[:16], SCHEME
    c.CodeMeaning = (meaning or CODES[key])[:64]
    return c


def _text(key: str, value: str) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = [_code(key)]
    item.TextValue = value
    return item


def _num(key: str, value: float, children: list[Any] | None = None, meaning: str | None = None) -> Any:
    from pydicom.dataset import Dataset
    from pydicom.valuerep import DSfloat

    unit = Dataset()
    unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "1", "UCUM", "no units"
    mv = Dataset()
    mv.MeasurementUnitsCodeSequence = [unit]
    mv.NumericValue = DSfloat(float(value), auto_format=True)
    mv.FloatingPointValue = float(value)  # the exact number; Numeric Value holds 16 characters of it
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "NUM"
    item.ConceptNameCodeSequence = [_code(key, meaning)]
    item.MeasuredValueSequence = [mv]
    if children:
        for child in children:
            child.RelationshipType = "HAS PROPERTIES"
        item.ContentSequence = children
    return item


@dataclass
class RunInfo:
    """What names a run in every object it stores: the task, model, weights, prompt set, versions and identity."""

    task: str
    model: str
    weights: str
    prompts: str
    version: str
    identity: str
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> RunInfo:
        return cls(str(result.get("task", "")), str(result.get("model", "")), str(result.get("pretrained", "")),
                   str(result.get("prompt_set") or ""), str((result.get("versions") or {}).get("medvlkit", "")),
                   str((result.get("identity") or {}).get("sha256", "")))

    def uid(self, *parts: str) -> str:
        from pydicom.uid import generate_uid

        return str(generate_uid(entropy_srcs=["medvlkit-stow", self.identity, *parts]))

    def texts(self) -> list[Any]:
        items = [_text("disclaimer", DISCLAIMER), _text("task", self.task), _text("model", self.model),
                 _text("weights", self.weights), _text("version", self.version), _text("result", self.identity)]
        return items + ([_text("prompts", self.prompts)] if self.prompts else [])


def _source_header(item: str) -> Any:
    import pydicom

    return pydicom.dcmread(fetch_instance(item), stop_before_pixels=True)


def _new_object(source: Any, ref: InstanceRef, run: RunInfo, sop_class: str, what: str, number: int) -> Any:
    """The attributes every stored object has: the source's patient and study, a new series, UIDs, equipment."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, kw, source.get(kw, ""))
    ds.StudyInstanceUID = ref.study
    ds.SeriesInstanceUID = run.uid("series", ref.study, what)
    ds.SOPInstanceUID = run.uid("instance", ref.sop, what)
    ds.SOPClassUID = sop_class
    ds.SeriesNumber, ds.InstanceNumber = 9000 + STOW_TASKS.index(run.task), number
    ds.SeriesDescription = f"medvlkit {run.task} {what} (not a diagnosis)"[:64]
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "medvlkit", run.model[:64], run.version
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def _reference(source: Any, ref: InstanceRef) -> tuple[Any, Any]:
    """(an IMAGE content item naming the source, the evidence sequence item of its study)."""
    from pydicom.dataset import Dataset

    sop = Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = str(source.SOPClassUID), ref.sop
    image = Dataset()
    image.RelationshipType, image.ValueType = "CONTAINS", "IMAGE"
    image.ConceptNameCodeSequence = [_code("source")]
    image.ReferencedSOPSequence = [sop]
    series = Dataset()
    series.SeriesInstanceUID = ref.series
    series.ReferencedSOPSequence = [sop]
    evidence = Dataset()
    evidence.StudyInstanceUID = ref.study
    evidence.ReferencedSeriesSequence = [series]
    return image, evidence


def build_report(item: str, run: RunInfo, values: list[Any], number: int) -> Any:
    """A Comprehensive SR about the instance ``item`` holding ``values`` (content items) and the run's texts."""
    ref = parse_item(item)
    source = _source_header(item)
    ds = _new_object(source, ref, run, COMPREHENSIVE_SR, "report", number)
    ds.Modality = "SR"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("report")]
    image, evidence = _reference(source, ref)
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    ds.ContentSequence = [*run.texts(), image, *values]
    return ds


def zeroshot_values(row: dict[str, str], classnames: list[str]) -> list[Any]:
    """The content items of one ``predictions.csv`` row: mode, classes compared, predicted, each probability."""
    items = [_text("mode", row.get("mode", "")), _text("over", row.get("softmax_over", "")),
             _text("predicted", row.get("predicted", ""))]
    for name in classnames:
        items.append(_num("probability", float(row[f"prob_{name}"]), [_text("class", name)],
                          meaning=f"Probability of {name}"))
    return items


def gate_values(row: dict[str, str], threshold: float, source: str) -> list[Any]:
    return [_num("p_medical", float(row["p_medical"])), _text("verdict", row["verdict"]),
            _num("threshold", threshold), _text("threshold_source", source)]


def build_capture(item: str, run: RunInfo, overlay: Path, label: str, number: int) -> Any:
    """A Secondary Capture of a heatmap ``overlay`` (RGB PNG) of the instance ``item`` for class ``label``."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset

    ref = parse_item(item)
    source = _source_header(item)
    ds = _new_object(source, ref, run, SECONDARY_CAPTURE, f"heatmap {label}", number)
    ds.Modality, ds.ConversionType = "OT", "WSD"
    pixels = np.asarray(Image.open(overlay).convert("RGB"))
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"medvlkit {run.task} heatmap of '{label}' ({run.model})"[:1024]
    ds.ImageComments = f"{DISCLAIMER} Model {run.model}; prompts {run.prompts or '-'}; medvlkit {run.version}; " \
                       f"result {run.identity}"
    src = Dataset()
    src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID = str(source.SOPClassUID), ref.sop
    ds.SourceImageSequence = [src]
    return ds


def read_report(ds: Any) -> dict[str, Any]:
    """An SR stored by medvlkit, read back: ``source`` (SOP Instance UID), the run's texts by name (``model``,
    ``prompts``, ``task``...), ``probabilities`` {class: float} for zeroshot, ``p_medical`` and ``threshold`` for
    gate (the exact float64 values).

    Raises:
        MedvlkitError: not an SR written by medvlkit.
    """
    concept = ds.get("ConceptNameCodeSequence")
    if not concept or concept[0].get("CodingSchemeDesignator") != SCHEME:
        raise MedvlkitError("not a medvlkit report (its concept name is not from the 99MEDVLKIT scheme)")
    out: dict[str, Any] = {"probabilities": {}}
    by_value = {f"MVK{k.upper()}"[:16]: k for k in CODES}
    for item in ds.ContentSequence:
        key = by_value.get(item.ConceptNameCodeSequence[0].CodeValue)
        if item.ValueType == "TEXT" and key:
            out[key] = str(item.TextValue)
        elif item.ValueType == "IMAGE":
            out["source"] = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif item.ValueType == "NUM" and key:
            value = float(item.MeasuredValueSequence[0].FloatingPointValue)
            if key == "probability":
                name = next(str(c.TextValue) for c in item.ContentSequence if c.ValueType == "TEXT")
                out["probabilities"][name] = value
            else:
                out[key] = value
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def stow_run(out_dir: Path, task: str) -> dict[str, Any]:
    """Store what the finished run in ``out_dir`` wrote on the PACS its images came from (see the module docstring);
    writes ``stow.json`` (each source instance and the objects stored about it) and returns its summary.

    Raises:
        MedvlkitError: not a run of zeroshot, gate or explain; an image that is not a DICOMweb instance (``--stow``
            writes back where the images came from); the PACS refused the objects.
    """
    if task not in STOW_TASKS:
        raise MedvlkitError(f"--stow: {task} results cannot be stored; valid: {', '.join(STOW_TASKS)}")
    result = json.loads((out_dir / "result.json").read_text())
    run = RunInfo.from_result(result)
    run.task = task
    files = [row["file"] for row in result.get("images") or []] if task == "explain" else \
        [row["file"] for row in _rows(out_dir / ("predictions.csv" if task == "zeroshot" else "gate.csv"))]
    bad = [item for item in files if not is_dicomweb(item)]
    if bad:
        raise MedvlkitError(f"--stow writes results back to the PACS the images came from; {bad[0]} is not a "
                            "DICOMweb instance (read the images with --data dicomweb:...)")
    objects: list[tuple[str, Any]] = []
    if task == "zeroshot":
        classes = list(result.get("classnames") or [])
        for i, row in enumerate(_rows(out_dir / "predictions.csv")):
            objects.append((row["file"], build_report(row["file"], run, zeroshot_values(row, classes), i + 1)))
    elif task == "gate":
        thr, src = float(result["threshold"]), str(result.get("threshold_source", ""))
        for i, row in enumerate(_rows(out_dir / "gate.csv")):
            objects.append((row["file"], build_report(row["file"], run, gate_values(row, thr, src), i + 1)))
    else:
        for i, row in enumerate(result.get("images") or []):
            for c, (label, overlay) in enumerate(row["overlays"].items()):
                objects.append((row["file"], build_capture(row["file"], run, out_dir / overlay, label,
                                                           i * 100 + c + 1)))
    return _store_all(objects, out_dir)


def _store_all(objects: list[tuple[str, Any]], out_dir: Path) -> dict[str, Any]:
    by_root: dict[str, list[Any]] = defaultdict(list)
    for item, ds in objects:
        by_root[parse_item(item).root].append(ds)
    for root, datasets in by_root.items():
        store(root, datasets)
    listing = [{"source": parse_item(item).sop, "stored": str(ds.SOPInstanceUID), "series": str(ds.SeriesInstanceUID),
                "sop_class": str(ds.SOPClassUID)} for item, ds in objects]
    summary = {"n_stored": len(objects), "pacs": sorted(by_root), "objects": listing}
    (out_dir / "stow.json").write_text(json.dumps(summary, indent=1))
    return summary
