"""The ``dicomweb`` format: the instances a ``dicomweb:`` query of a PACS matches, as a dataset
(:mod:`medvlkit.data.dicomweb` talks to the PACS; this module makes the dataset and reads the labels)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medvlkit.data.adapters.csv_labels import read_label_table
from medvlkit.data.dataset import ImageDataset, register_adapter
from medvlkit.data.dicomweb import (
    PAGE_SIZE,
    completeness_check,
    is_image_class,
    parse_spec,
    query_instances,
    row_ref,
    split_images,
)
from medvlkit.errors import MedvlkitError, NoSplitsError

logger = logging.getLogger(__name__)


def _never(_path: Path) -> bool:
    return False  # a dicomweb: spec is a string, recognised by load_dataset before any path is detected


LABEL_KEYS = {"SOPInstanceUID": "sop", "SeriesInstanceUID": "series", "StudyInstanceUID": "study"}


@register_adapter("dicomweb", "a PACS over DICOMweb: --data dicomweb:http://host:port/dicom-web/instances?Modality=CR "
                  "(QIDO filters; --labels CSV keyed by SOPInstanceUID, SeriesInstanceUID or StudyInstanceUID)",
                  _never)
def load_dicomweb(spec: str, split: str | None = None, labels: str | None = None,
                  label_columns: list[str] | str | None = None, uncertain: str | None = None,
                  page_size: int = PAGE_SIZE) -> ImageDataset:
    """The instances a ``dicomweb:`` query matches, as a dataset (see the module docstring).

    Args:
        spec: ``dicomweb:<url>``.
        split: with ``labels``: the rows of the labels CSV whose ``split`` column equals it.
        labels: a CSV with a ``SOPInstanceUID``, ``SeriesInstanceUID`` or ``StudyInstanceUID`` column and labels in
            any layout a label CSV of files takes; an instance found by the query but in no row is listed in
            ``skipped`` (not scored), and so is a row whose instances the query did not find.
        label_columns, uncertain: as for a label CSV.

    Raises:
        MedvlkitError: a bad spec or PACS answer (see :func:`query_instances`), no instance found, a split without a
            labels CSV, a UID in two rows of the labels CSV.
    """
    query = parse_spec(spec)
    if split and not labels:
        raise NoSplitsError(f"split '{split}': DICOMweb data has no splits of its own; give --labels CSV with a "
                            "'split' column, or drop the split option")
    rows = query_instances(query, page_size)
    host = urlsplit(query.root).netloc
    name = f"dicomweb_{host}".replace(":", "_").replace("[", "").replace("]", "")
    if not rows:
        raise MedvlkitError(f"--data {spec}: the PACS found no instance for this query")
    if all(not is_image_class(r["sop_class"]) for r in rows):
        raise MedvlkitError(f"--data {spec}: the {len(rows)} instance(s) found are not images (reports, documents...)")
    meta: dict[str, Any] = {"dicomweb": {"root": query.root, "level": query.level, "study": query.study,
                                         "series": query.series, "filters": dict(query.filters),
                                         "instances_found": len(rows),
                                         "completeness": completeness_check(query)}}
    rows, skipped = split_images(query, rows)
    classnames: list[str] = []
    matrix = None
    multilabel = False
    if labels:
        path = Path(labels)
        if not path.is_file():
            raise MedvlkitError(f"--labels {labels}: no such file")
        keyed = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
        table = read_label_table(path, None, keyed, "DICOM UID", split, label_columns, None, uncertain)
        level = LABEL_KEYS[table.key_column]
        keys = [k.strip() for k in table.keys]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise MedvlkitError(f"{path}: {table.key_column} {twice[0]} is in {keys.count(twice[0])} rows; give each "
                                "UID one row ('|' joins several classes)")
        row_of = {k: i for i, k in enumerate(keys)}
        every = set(keys) if not split else {k.strip() for k in read_label_table(
            path, table.key_column, keyed, "DICOM UID", None, label_columns, None, uncertain).keys}
        kept = [r for r in rows if r[level] in row_of]
        skipped += [(row_ref(query, r).item, f"no row in {path.name} for its {table.key_column}") for r in rows
                    if r[level] not in every]
        found = {r[level] for r in rows}
        skipped += [(f"{table.key_column}={k}", f"a row of {path.name} whose instances the query did not find")
                    for k in keys if k not in found]
        if not kept:
            raise MedvlkitError(f"--labels {labels}: none of the {len(rows)} instances found is in its rows"
                                + (f" of split '{split}'" if split else ""))
        matrix = table.labels[[row_of[str(r[level])] for r in kept]]
        classnames = table.names
        multilabel = not table.single_label
        rows = kept
        meta |= {"layout": table.layout, "labels_file": str(path), "labels_key": table.key_column}
    if skipped:
        logger.warning("%s: %d entr%s not scored (listed in the result): %s", spec, len(skipped),
                       "y" if len(skipped) == 1 else "ies", skipped[0][1])
    items = [row_ref(query, r).item for r in rows]
    return ImageDataset(items=items, name=name, classnames=classnames, labels=matrix, multilabel=multilabel,
                        split=split, meta=meta, groups=[r["patient"] or r["study"] for r in rows], skipped=skipped,
                        attributes={"modality": [r["modality"] for r in rows],
                                    "study": [r["study"] for r in rows], "series": [r["series"] for r in rows]})
