"""CSV files with a path column plus 0/1(/-1) label columns (CheXpert) or a ``|``-separated findings column
(ChestX-ray14 ``Data_Entry_2017.csv``)."""

from __future__ import annotations

import contextlib
import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medvlkit.data.dataset import ImageDataset, register_adapter
from medvlkit.errors import MedvlkitError, NoSplitsError

logger = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "Path", "file", "filename", "image", "Image Index", "image_path", "img_path")
# Columns holding each image's class name(s) (``|``-separated for several): the layouts users write.
CLASS_COLUMNS = ("label", "labels", "class", "target", "diagnosis", "Finding Labels", "findings")
GROUP_COLUMNS = ("Patient ID", "patient_id", "PatientID", "subject_id", "patient")  # ChestX-ray14, MIMIC-CXR...
CAPTION_COLUMNS = ("caption", "text", "Caption", "report")
UNCERTAIN_POLICIES = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}
_LABEL_VALUES = {"", "0", "1", "-1", "0.0", "1.0", "-1.0"}


def read_text(path: Path) -> str:
    """A text file's content as UTF-8 (a BOM tolerated).

    Raises:
        MedvlkitError: the file is not UTF-8 (latin-1, binary...), naming the line and the byte.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise MedvlkitError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as "
                            "UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


@contextlib.contextmanager
def _csv_errors(path: Path) -> Iterator[None]:
    """Decoding and parsing errors of a CSV file as one-line errors naming the file (and the line, for UTF-8)."""
    try:
        yield
    except UnicodeDecodeError:
        read_text(path)  # raises the error naming the line and byte
        raise
    except csv.Error as err:
        raise MedvlkitError(f"{path}: not a readable CSV file ({err})") from None


def iter_csv_rows(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    """Header and a stream of rows (field lists) of a CSV file (UTF-8, BOM tolerated), read as it goes: memory
    does not grow with the file. Blank lines are skipped.

    Raises:
        MedvlkitError: not UTF-8, not parseable, a duplicated column name, or (while iterating) a row whose field
            count differs from the header's.
    """
    f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by the generator below
    reader = csv.reader(f)
    try:
        with _csv_errors(path):
            header = [h.strip() for h in next(reader, [])]
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            raise MedvlkitError(f"{path}: column name(s) {dupes} appear more than once in the header")
    except BaseException:
        f.close()
        raise

    def rows() -> Iterator[list[str]]:
        with f, _csv_errors(path):
            for fields in reader:
                if not fields:
                    continue  # a blank line
                if len(fields) != len(header):
                    raise MedvlkitError(f"{path}: line {reader.line_num} has {len(fields)} fields, the header "
                                        f"has {len(header)}")
                yield fields

    return header, rows()


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (UTF-8, BOM tolerated), as dicts.

    Raises:
        MedvlkitError: not UTF-8, not parseable, or a row whose field count differs from the header's.
    """
    header, rows = iter_csv_rows(path)
    return header, [dict(zip(header, fields)) for fields in rows]


def pick_column(header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    """The named column, or the first candidate present; a clear error naming the columns otherwise."""
    if wanted:
        if wanted not in header:
            raise MedvlkitError(f"{path} has no column '{wanted}' (for {what}); its columns: {', '.join(header)}")
        return wanted
    for c in candidates:
        if c in header:
            return c
    raise MedvlkitError(f"{path}: no {what} column found (looked for {', '.join(candidates)}); its columns: "
                        f"{', '.join(header)}. Name it with the matching option")


def resolve_image_path(value: str, roots: list[Path]) -> str:
    """First existing ``root/value`` (absolute values kept); the first candidate if none exists."""
    p = Path(value)
    if p.is_absolute():
        return str(p)
    cands = [r / value for r in roots] + [r / "images" / value for r in roots]
    for c in cands:
        if c.exists():
            return str(c.resolve())
    return str(cands[0].resolve())


def csv_header_line(path: Path) -> str:
    """The first line of a CSV file, for format detection (undecodable bytes replaced: reading reports them)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return f.readline()


def _detect(path: Path) -> bool:
    if not (path.is_file() and path.suffix.lower() == ".csv"):
        return False
    return not any(c in csv_header_line(path) for c in CAPTION_COLUMNS)


def _is_label_column(values: list[str]) -> bool:
    """Every non-empty value is 1, 0 or -1."""
    return bool(values) and all(v in _LABEL_VALUES for v in values)


def _label_columns(header: list[str], rows: list[dict[str, str]], skip: set[str], path: Path) -> tuple[list[str],
                                                                                                      list[str]]:
    """(label columns, columns not used): label columns hold only 1 / 0 / -1 / blank. A column whose values are
    mostly such labels but not all stops the load naming the offending row: dropping it (or a stray value in it)
    silently would change the label space."""
    labels, unused = [], []
    for c in header:
        if c in skip:
            continue
        values = [r[c].strip() for r in rows if r[c].strip()]
        good = sum(v in _LABEL_VALUES for v in values)
        if values and good == len(values):
            labels.append(c)
        elif values and good * 2 >= len(values):
            _check_label_values(rows, c, path)
        else:
            unused.append(c)
    return labels, unused


def _check_label_values(rows: list[dict[str, str]], column: str, path: Path) -> None:
    for i, r in enumerate(rows):
        if r[column].strip() not in _LABEL_VALUES:
            raise MedvlkitError(f"{path}: column '{column}' holds labels (1, 0, -1, blank) but '{r[column].strip()}' "
                                f"in data row {i + 1}; fix the value, or name the label columns with --label-columns")


@dataclass
class LabelTable:
    """The labels of a label CSV, one row per key (an image path, or a DICOM UID): ``names`` (the classes),
    ``labels`` (rows x classes: 1, 0, NaN unknown), ``groups`` (the patient column's values, where there is one)
    and how the layout was read (``layout``, ``group_column``)."""

    keys: list[str]
    key_column: str
    names: list[str]
    labels: np.ndarray
    layout: str
    group_column: str | None = None
    groups: list[str | None] | None = None

    @property
    def single_label(self) -> bool:
        """Every row has exactly one class."""
        return bool(np.all(np.nansum(self.labels, axis=1) == 1) and not np.isnan(self.labels).any())


def read_label_table(path: Path, key_column: str | None, key_columns: tuple[str, ...], key_name: str,
                     split: str | None = None, label_columns: list[str] | str | None = None,
                     findings_column: str | None = None, uncertain: str | None = None,
                     group_column: str | None = None) -> LabelTable:
    """A label CSV's keys and labels (the layouts of :func:`load_label_csv`), keyed by ``key_column`` or the first
    of ``key_columns`` present (``key_name`` says what the key is, in errors). The one reader of label CSVs: files
    (:func:`load_label_csv`) and DICOMweb instances (:mod:`medvlkit.data.dicomweb`) both use it."""
    uncertain = uncertain or "ignore"
    if uncertain not in UNCERTAIN_POLICIES:
        raise MedvlkitError(f"--uncertain {uncertain}: valid options: {', '.join(UNCERTAIN_POLICIES)}")
    header, rows = read_csv_rows(path)
    if not rows:
        raise MedvlkitError(f"{path} has a header but no rows")
    pcol = pick_column(header, key_column, key_columns, key_name, path)
    rows = select_split(path, header, rows, pcol, split)
    gcol = pick_column(header, group_column, (), "patient id", path) if group_column else next(
        (c for c in GROUP_COLUMNS if c in header and c != pcol), None)
    if isinstance(label_columns, str):
        label_columns = [c.strip() for c in label_columns.split(",") if c.strip()]
    layout = _layout(path, header, rows, {c for c in (pcol, "split", gcol) if c}, label_columns or [], findings_column)
    if layout.class_column:
        names, labels = _class_column_labels(rows, layout.class_column)
    else:
        labels = np.array([[_label_value(r[c], uncertain) for c in layout.columns] for r in rows], dtype=np.float32)
        names = list(layout.columns)
        if layout.binary:
            if np.isnan(labels).any():
                raise MedvlkitError(f"{path}: the binary label '{names[0]}' is unknown (blank, or -1 with --uncertain "
                                    "ignore) in some rows; give every row 0 or 1, choose --uncertain zeros|ones, or "
                                    f"keep it a multi-label column with --label-columns {names[0]}")
            labels = np.concatenate([1 - labels, labels], axis=1)
            names = [f"no {names[0]}", names[0]]
    if not (label_columns or findings_column or key_column):
        logger.warning("%s read as: %ss in '%s'; %s%s", path.name, key_name, pcol, layout.describe(names),
                       f"; not used: {', '.join(layout.unused)}" if layout.unused else "")
    return LabelTable([r[pcol] for r in rows], pcol, names, labels, layout.describe(names), gcol,
                      [r[gcol].strip() for r in rows] if gcol else None)


@register_adapter("csv", "CSV: a path column plus a class column (label, class, target, diagnosis; '|' for several), "
                  "0/1/-1 label columns (CheXpert), or one 0/1 column (a binary label)", _detect, priority=10)
def load_label_csv(path: Path, split: str | None = None, path_column: str | None = None,
                   label_columns: list[str] | str | None = None, findings_column: str | None = None,
                   uncertain: str | None = None, image_root: str | None = None,
                   group_column: str | None = None) -> ImageDataset:
    """Load a label CSV. The layout is read from its columns and said in one line (a warning in the log):

    - a class column (``label``, ``labels``, ``class``, ``target``, ``diagnosis``, ChestX-ray14's ``Finding
      Labels``): each image's class name, or names joined by ``|`` (multi-label);
    - 0/1/-1/blank label columns (CheXpert): one class each, multi-label;
    - a single 0/1 column ``X`` without unknown values: one binary label, the classes ``no X`` and ``X``.

    A class column wins over 0/1 columns beside it (named as not used). Refused as ambiguous: a column of mostly
    labels with a stray value.

    Args:
        path_column: column with image paths (relative to ``image_root``, the CSV's folder or its parent).
        label_columns: label columns (comma-separated or list), or one class column; auto: as above.
        findings_column: the class column, when its name is not one of the usual ones.
        uncertain: CheXpert's -1: ``ignore`` (default; NaN, masked from metrics), ``zeros`` or ``ones``.
        split: keep rows whose ``split`` column equals it (when the CSV has one).
        group_column: the column naming each image's patient (auto: one of ``GROUP_COLUMNS``), read into
            ``ImageDataset.groups`` so held-out validation is patient-level.
    """
    table = read_label_table(path, path_column, PATH_COLUMNS, "image path", split, label_columns, findings_column,
                             uncertain, group_column)
    roots = [Path(image_root)] if image_root else [path.parent, path.parent.parent]
    items = [resolve_image_path(k, roots) for k in table.keys]
    return ImageDataset(items=items, name=path.stem, classnames=table.names, labels=table.labels,
                        multilabel=not table.single_label, split=split,
                        meta={"uncertain": uncertain or "ignore", "layout": table.layout}
                        | ({"group_column": table.group_column} if table.group_column else {}),
                        groups=table.groups)


@dataclass
class _Layout:
    """How a label CSV holds its labels: a class column, or 0/1 label columns (``binary``: exactly one)."""

    class_column: str | None = None
    columns: list[str] = field(default_factory=list)
    binary: bool = False
    unused: list[str] = field(default_factory=list)

    def describe(self, names: list[str]) -> str:
        if self.class_column:
            return f"class names in '{self.class_column}' ({len(names)} classes)"
        if self.binary:
            return f"one binary label '{self.columns[0]}' (classes '{names[0]}' / '{names[1]}')"
        return f"{len(self.columns)} label column(s) {', '.join(self.columns)} (multi-label)"


def _layout(path: Path, header: list[str], rows: list[dict[str, str]], skip: set[str], label_columns: list[str],
            findings_column: str | None) -> _Layout:
    """The label layout of a CSV (see :func:`load_label_csv`), from the options or the columns themselves."""
    for c in label_columns:
        pick_column(header, c, (), "labels", path)
    if len(label_columns) == 1 and not _is_label_column([r[label_columns[0]].strip() for r in rows
                                                         if r[label_columns[0]].strip()]):
        return _Layout(class_column=label_columns[0])  # one named column of class names
    if label_columns:
        for c in label_columns:
            _check_label_values(rows, c, path)
        return _Layout(columns=label_columns)
    if findings_column:
        return _Layout(class_column=pick_column(header, findings_column, (), "class names", path))
    class_column = next((c for c in CLASS_COLUMNS if c in header and c not in skip), None)
    if class_column:  # it holds the labels; 0/1 columns beside it are named as not used (--label-columns takes them)
        unused = [c for c in header if c not in skip and c != class_column]
        return _Layout(class_column=class_column, unused=unused)
    columns, unused = _label_columns(header, rows, skip, path)
    if not columns:
        raise MedvlkitError(f"{path}: no labels found: no class column ({', '.join(CLASS_COLUMNS)}) and no column of "
                            f"0/1/-1 values; its columns: {', '.join(header)}. Name them with --label-columns")
    return _Layout(columns=columns, binary=len(columns) == 1, unused=unused)


def _class_column_labels(rows: list[dict[str, str]], column: str) -> tuple[list[str], np.ndarray]:
    """Class names (sorted) and the 0/1 matrix of a class column (``|`` separates several classes of one image)."""
    present = [{f.strip() for f in r[column].split("|") if f.strip()} for r in rows]
    names = sorted(set().union(*present))
    return names, np.array([[1.0 if n in p else 0.0 for n in names] for p in present], dtype=np.float32)


def select_split(path: Path, header: list[str], rows: list[dict[str, str]], pcol: str,
                  split: str | None) -> list[dict[str, str]]:
    """The rows of ``split``: by the ``split`` column, else by ChestX-ray14's official lists beside the CSV.

    Raises:
        NoSplitsError: a split is asked of a CSV that has neither (every row would be used, test included).
    """
    if not split:
        return rows
    if "split" not in header and _official_lists(path):
        return _official_split(path, rows, pcol, split)
    if "split" not in header:
        raise NoSplitsError(f"split '{split}': {path} has no 'split' column, so it cannot select rows (using every "
                            "row would score training images as test images); add a 'split' column "
                            "(train/val/test), or drop the split option")
    rows = [r for r in rows if str(r.get("split", "")).strip().lower() == split.lower()]
    if not rows:
        raise MedvlkitError(f"{path}: no rows with split == '{split}'")
    return rows


OFFICIAL_LISTS = {"train": "train_val_list.txt", "test": "test_list.txt"}  # ChestX-ray14's patient-wise split


def _official_lists(path: Path) -> bool:
    return all((path.parent / f).is_file() for f in OFFICIAL_LISTS.values())


def _official_split(path: Path, rows: list[dict[str, str]], pcol: str, split: str) -> list[dict[str, str]]:
    """ChestX-ray14: rows of the official ``train_val_list.txt`` / ``test_list.txt`` beside the CSV (patient-level:
    a patient in both lists is an error). There is no official val list: validation is held out of train."""
    name = {"training": "train", "train": "train", "test": "test", "testing": "test"}.get(split.lower())
    if name is None:
        raise MedvlkitError(f"split '{split}': ChestX-ray14's official lists give train and test only; validation "
                            r"is a patient-level part of train (--val-split holdout --group-pattern '(\d{8})_')")
    lists = {k: {ln.strip() for ln in (path.parent / f).read_text().splitlines() if ln.strip()}
             for k, f in OFFICIAL_LISTS.items()}
    patient = {k: {Path(n).name.split("_")[0] for n in v} for k, v in lists.items()}
    both = patient["train"] & patient["test"]
    if both:
        raise MedvlkitError(f"{path.parent}: patient(s) {sorted(both)[:5]} are in both {OFFICIAL_LISTS['train']} and "
                            f"{OFFICIAL_LISTS['test']}; the split would leak patients")
    keep = [r for r in rows if Path(r[pcol].strip()).name in lists[name]]
    if not keep:
        raise MedvlkitError(f"{path}: no row's image is listed in {OFFICIAL_LISTS[name]}")
    logger.info("%s: official ChestX-ray14 %s list: %d rows", path, name, len(keep))
    return keep


def _label_value(raw: str, uncertain: str) -> float:
    raw = raw.strip()
    if raw == "":
        return float("nan")
    v = float(raw)
    return UNCERTAIN_POLICIES[uncertain] if v == -1 else v
