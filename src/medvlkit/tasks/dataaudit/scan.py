"""One pass over a dataset's images for the audit, in loader workers: each image's fingerprint (pixel hash,
perceptual hashes, thumbnails: :mod:`medvlkit.tasks.dataaudit.hashes`) and the trivial properties a shortcut could hide
in (size, aspect, mode, bit depth, file format, file size, mean and spread of intensity, border statistics)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.items import is_npz_item, item_file
from medvlkit.errors import ImageReadError
from medvlkit.tasks.dataaudit.hashes import fingerprint

PROPERTIES = ("width", "height", "aspect", "megapixels", "bit_depth", "file_kb", "mean", "std", "border_mean",
              "border_std", "grey")
"""The numeric trivial properties (file format and the file-name pattern are categorical, kept apart)."""


@dataclass
class Facts:
    """What the audit knows of the readable images of a dataset (row i = ``positions[i]``).

    Attributes:
        positions: (N,) dataset positions of the readable images.
        pixel: N pixel hashes; ``hashes`` (N, 3, 8) uint64; ``thumbs`` (N, 3, 64, 64) uint8 (12 kB an image).
        properties: (N, len(PROPERTIES)) float; ``formats``: N file formats; ``unreadable``: (item, reason).
    """

    positions: np.ndarray
    pixel: list[str]
    hashes: np.ndarray
    thumbs: np.ndarray
    properties: np.ndarray
    formats: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def raw_properties(item: str) -> tuple[str, int, int]:
    """(file format, bits per sample, file size in bytes) of an item as stored, before medvlkit converts it."""
    if is_npz_item(item):
        return "npz", 8, 0
    path = item_file(item)
    size = os.path.getsize(path)
    try:
        with Image.open(path) as im:
            bits = 16 if im.mode in ("I;16", "I;16B", "I;16L") else 32 if im.mode in ("I", "F") else 8
            return str(im.format or "unknown"), bits, size
    except Exception:  # noqa: BLE001 - not a Pillow format: DICOM or unknown
        try:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return "DICOM", int(ds.get("BitsStored", 8) or 8), size
        except Exception:  # noqa: BLE001
            return "unknown", 8, size


def image_properties(image: Image.Image, item: str) -> tuple[np.ndarray, str]:
    """The numeric :data:`PROPERTIES` of one image and its file format."""
    fmt, bits, size = raw_properties(item)
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    h, w = grey.shape
    b = max(1, int(round(0.05 * min(h, w))))
    border = np.concatenate([grey[:b].ravel(), grey[-b:].ravel(), grey[:, :b].ravel(), grey[:, -b:].ravel()])
    values = [w, h, w / h, w * h / 1e6, bits, size / 1024, grey.mean(), grey.std(), border.mean(), border.std(),
              float(image.mode == "L")]
    return np.array(values, dtype=np.float64), fmt


class _ItemFacts(torch.utils.data.Dataset):
    """Position -> (position, (pixel hash, hashes, thumbs, properties, format) or None, reason)."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pos: int):
        try:
            image = self.dataset.load_image(pos)
            pixel, hashes, thumbs = fingerprint(image)
            props, fmt = image_properties(image, self.dataset.items[pos])
            return pos, (pixel, hashes, thumbs, props, fmt), ""
        except ImageReadError as err:
            return pos, None, err.reason
        except Exception as err:  # noqa: BLE001 - name it, list it
            return pos, None, f"{type(err).__name__}: {err}"


def scan(dataset: ImageDataset, num_workers: int = 0, progress: bool = True) -> Facts:
    """Fingerprints and properties of every image of ``dataset`` (unreadable ones listed)."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(_ItemFacts(dataset), batch_size=32, num_workers=num_workers,
                                         collate_fn=list, generator=torch.Generator())  # global RNG untouched
    rows, bad = [], list(dataset.skipped)
    with tqdm(total=len(dataset), desc="audit: hash images", unit="img", disable=not progress) as bar:
        for batch in loader:
            for pos, facts, reason in batch:
                if facts is None:
                    bad.append((dataset.items[pos], reason))
                else:
                    rows.append((pos, *facts))
            bar.update(len(batch))
    if not rows:
        return Facts(np.zeros(0, int), [], np.zeros((0, 3, 8), np.uint64), np.zeros((0, 3, 64, 64), np.uint8),
                     np.zeros((0, len(PROPERTIES))), [], bad)
    pos, pixel, hashes, thumbs, props, fmts = zip(*rows)
    return Facts(np.array(pos), list(pixel), np.stack(hashes), np.stack(thumbs), np.stack(props), list(fmts), bad)
