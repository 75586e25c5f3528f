"""What a model was trained on, as it declares it: a *training manifest*.

Two kinds of manifest are read:

- ``pixel-sha1``: medvlkit's own (``lite`` ships ``lite_training_images.txt.gz``): one sha1 of the decoded pixels
  per training image (:func:`medvlkit.tasks.dataaudit.hashes.pixel_hash`: mode, size and values), under a header line
  ``# medvlkit training manifest v1 kind=pixel-sha1`` and ``# ...`` comment lines saying where they came from. It
  matches an image whatever its file name or container, as long as its pixels are the same.
- ``ids``: a published CSV of image ids, the form other models publish (e.g. RAD-DINO's ``training_images.csv``).
  An image matches when its file name without extension (or with it) is one of the ids; the id column is the first
  of :data:`ID_COLUMNS` present, or the only column. Ids can say nothing of a renamed copy: an ids manifest finds
  only what keeps its published name.

A model declares its manifest with :meth:`medvlkit.models.base.ModelBase.training_manifest`; a user can name one
with ``--training-manifest FILE``. What uses it (``audit --model``, and the verbs that set seen images aside) is in
:mod:`medvlkit.engine.seen`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from medvlkit.errors import MedvlkitError

HEADER = "# medvlkit training manifest v1 kind=pixel-sha1"
ID_COLUMNS = ("image_id", "dicom_id", "image", "filename", "file_name", "file", "path", "id")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class TrainingManifest:
    """The images a model was trained on.

    Attributes:
        kind: ``pixel-sha1`` (decoded-pixel hashes) or ``ids`` (image ids, matched on file names).
        values: the hashes or ids.
        path: the file it was read from; ``sha256``: that file's sha256 (what result.json records).
        sources: the comment lines under the header (what the images were), for people.
    """

    kind: str
    values: frozenset[str]
    path: str
    sha256: str
    sources: tuple[str, ...] = ()

    def record(self) -> dict:
        """JSON-ready identity: file, sha256, kind and size."""
        return {"file": self.path, "sha256": self.sha256, "kind": self.kind, "n_images": len(self.values)}


def _text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise MedvlkitError(f"{path}: not a readable training manifest ({err}); expected medvlkit's "
                            "pixel-sha1 list or a CSV of image ids, optionally gzipped") from None


def read_manifest(path: str | Path) -> TrainingManifest:
    """Read a training manifest (either kind; gzipped or not), checked.

    Raises:
        MedvlkitError: missing file, or one that is neither kind (the message says what was expected).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MedvlkitError(f"training manifest {path} not found; pass --training-manifest a file that exists")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    text = _text(path)
    lines = text.splitlines()
    if lines and lines[0].strip() == HEADER:
        sources = tuple(line[1:].strip() for line in lines[1:] if line.startswith("#"))
        values = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        bad = [v for v in values if not _SHA1.match(v)]
        if bad:
            raise MedvlkitError(f"{path}: not a valid pixel-sha1 manifest (line '{bad[0][:60]}' is not a sha1)")
        return TrainingManifest("pixel-sha1", frozenset(values), str(path.resolve()), sha, sources)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not rows[0]:
        raise MedvlkitError(f"{path}: empty training manifest")
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(c) for c in ID_COLUMNS if c in header), 0 if len(header) == 1 else None)
    if column is None:
        raise MedvlkitError(f"{path}: a CSV manifest needs an image id column (one of {', '.join(ID_COLUMNS)}), "
                            f"or a single column; found columns {rows[0][:8]}")
    ids = {Path(r[column].strip()).name for r in rows[1:] if len(r) > column and r[column].strip()}
    return TrainingManifest("ids", frozenset(ids), str(path.resolve()), sha)


def id_keys(item_name: str) -> tuple[str, str]:
    """The names an image is looked up under in an ``ids`` manifest: its file name and its stem."""
    name = Path(item_name).name
    return name, name.split(".")[0]


def write_pixel_manifest(path: str | Path, hashes: list[str], sources: list[str]) -> Path:
    """Write a ``pixel-sha1`` manifest (sorted, de-duplicated, gzipped with a fixed mtime so the bytes reproduce)."""
    path = Path(path)
    body = "\n".join([HEADER] + [f"# {s}" for s in sources] + sorted(set(hashes))) + "\n"
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as f:
        f.write(body.encode())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path
