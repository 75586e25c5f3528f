"""Image-caption data: JSONL ``{"image", "text"}`` (CLIP_COVID style) and ROCO-style CSV."""

from __future__ import annotations

import json
from pathlib import Path

from medvlkit.data.adapters.csv_labels import (
    CAPTION_COLUMNS,
    PATH_COLUMNS,
    csv_header_line,
    pick_column,
    read_csv_rows,
    read_text,
    resolve_image_path,
    select_split,
)
from medvlkit.data.dataset import ImageDataset, register_adapter
from medvlkit.errors import MedvlkitError


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file: one JSON object per line; a malformed line is an error naming the line."""
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MedvlkitError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise MedvlkitError(f"{path}:{n}: each line must be a JSON object like {{\"image\": ..., \"text\": ...}}, "
                                f"got {type(row).__name__}")
        rows.append(row)
    return rows


def _detect_captions(path: Path) -> bool:
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return True
    if path.is_file() and path.suffix.lower() == ".csv":
        return any(c in csv_header_line(path) for c in CAPTION_COLUMNS)
    return False


@register_adapter("captions", "image-caption pairs: JSONL {\"image\", \"text\"} or CSV with a path and a "
                  "caption column (ROCO)", _detect_captions, priority=20)  # before csv: a caption column decides
def load_captions(path: Path, split: str | None = None, path_column: str | None = None,
                  caption_column: str | None = None, image_root: str | None = None) -> ImageDataset:
    """Load image-caption pairs; image paths are relative to ``image_root`` or the file's folder."""
    if path.suffix.lower() == ".jsonl":
        rows = read_jsonl(path)
        if not rows:
            raise MedvlkitError(f"{path} holds no image-caption rows")
        header = sorted({k for r in rows for k in r})
        pcol = pick_column(header, path_column, PATH_COLUMNS + ("name",), "image path", path)
        tcol = pick_column(header, caption_column, CAPTION_COLUMNS, "caption", path)
        for n, r in enumerate(rows, 1):
            for col, what in ((pcol, "an image path"), (tcol, "a caption")):
                if col in r and not isinstance(r[col], str):
                    raise MedvlkitError(f"{path}: row {n}: '{col}' is {json.dumps(r[col])[:60]}, not a string; "
                                        f"every row needs {what} as text")
        rows = [{k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in rows]
    else:
        header, rows = read_csv_rows(path)
    if not rows:
        raise MedvlkitError(f"{path} holds no image-caption rows")
    pcol = pick_column(header, path_column, PATH_COLUMNS + ("name",), "image path", path)
    tcol = pick_column(header, caption_column, CAPTION_COLUMNS, "caption", path)
    rows = select_split(path, header, rows, pcol, split)
    for n, r in enumerate(rows, 1):
        if not r.get(pcol, "").strip() or r.get(tcol) is None or not r[tcol].strip():
            raise MedvlkitError(f"{path}: row {n} has no '{pcol}' or no '{tcol}' value; every row needs both")
    roots = [Path(image_root)] if image_root else [path.parent]
    items = [resolve_image_path(r[pcol], roots) for r in rows]
    return ImageDataset(items=items, name=path.stem, texts=[r[tcol] for r in rows], split=split)
