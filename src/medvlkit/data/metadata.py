"""Per-image metadata from a file, for subgroup analysis: a CSV or JSON-lines table with a ``file`` column (the image
path or item id, as the predictions name it) and any other columns (sex, age, view, scanner, site...)."""

from __future__ import annotations

from pathlib import Path

from medvlkit.data.adapters.captions import read_jsonl
from medvlkit.data.adapters.csv_labels import pick_column, read_csv_rows
from medvlkit.errors import MedvlkitError

FILE_COLUMNS = ("file", "path", "image", "filename")


def read_metadata(path: Path) -> dict[str, dict[str, str | None]]:
    """{item id: {column: value or None}} from a CSV or ``.jsonl`` file. A relative ``file`` value is also keyed by
    its absolute path beside the metadata file, so it joins with predictions that name absolute paths.

    Raises:
        MedvlkitError: no such file, no file column, or one file listed twice with different values.
    """
    path = Path(path)
    if not path.is_file():
        raise MedvlkitError(f"--metadata {path}: no such file")
    if path.suffix.lower() == ".jsonl":
        rows = [{str(k): None if v is None else str(v) for k, v in r.items()} for r in read_jsonl(path)]
        header = sorted({k for r in rows for k in r})
    else:
        header, csv_rows = read_csv_rows(path)
        rows = [dict(r) for r in csv_rows]
    key = pick_column(header, None, FILE_COLUMNS, "image file", path)
    out: dict[str, dict[str, str | None]] = {}
    for r in rows:
        name = str(r.get(key) or "")
        values = {k: (None if v is None or str(v).strip() == "" else str(v).strip()) for k, v in r.items() if k != key}
        names = {name} | ({str((path.parent / name).resolve())} if name and not Path(name).is_absolute() else set())
        for n in names:
            if n in out and out[n] != values:
                raise MedvlkitError(f"--metadata {path}: '{name}' is listed twice with different values")
            out[n] = values
    return out


def metadata_columns(items: list[str], table: dict[str, dict[str, str | None]], columns: list[str],
                     path: Path) -> dict[str, list[str | None]]:
    """The requested ``columns`` for each item (None where the item has no row or no value).

    Raises:
        MedvlkitError: a column no row has, or no item found in the table at all.
    """
    known = {k for v in table.values() for k in v}
    missing = [c for c in columns if c not in known]
    if missing:
        raise MedvlkitError(f"--metadata {path} has no column {missing[0]!r}; its columns: {', '.join(sorted(known))}")
    if items and not any(i in table for i in items):
        raise MedvlkitError(f"--metadata {path}: none of the {len(items)} images is listed (e.g. {items[0]}); its "
                            f"'file' column must name them as the predictions do")
    return {c: [table.get(i, {}).get(c) for i in items] for c in columns}
