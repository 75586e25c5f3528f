"""The one pixel path: a dataset item, an image file or an upload's bytes -> the uint8 view (3, S, S) a model's
preprocessing makes of it (read by :mod:`medvlkit.data.io`: formats, DICOM display, EXIF, the pixel limit; then
``ImagePreprocessor.to_uint8``: grey to RGB, resize, crop or pad). Normalisation happens later, on the model's
device (``ImagePreprocessor.normalize``).

Every caller reads pixels here: the embedding loop (:func:`medvlkit.engine.features.embed_images`), fine-tuning's
batches, ``explain``, search queries, the server's uploads and the export's check, so limits, EXIF, grey handling and
geometry cannot drift between them. A failure comes back as its reason (or, ``strict``, an error naming the item).
"""

from __future__ import annotations

import torch
from PIL import Image

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.io import read_image, read_image_bytes
from medvlkit.errors import ImageReadError
from medvlkit.models.base import ImagePreprocessor


def view_of(source: str | bytes | Image.Image, preprocessor: ImagePreprocessor, name: str | None = None,
            draft: int | None = None) -> torch.Tensor:
    """One image -> uint8 (3, S, S).

    Args:
        source: a file path (or item id), an upload's bytes, or an image already read.
        name: how an upload is named in errors.
        draft: decode large JPEGs at a reduced scale, at least twice this size (:func:`~medvlkit.data.io.read_image`).

    Raises:
        ImageReadError: unreadable, not an image, or over the pixel limit; the message names the file.
    """
    high_bit = preprocessor.cfg.high_bit  # the model's rule for 16-bit files, applied as they are decoded
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (bytes, bytearray)):
        image = read_image_bytes(bytes(source), name or "upload", draft=draft, high_bit=high_bit)
    else:
        image = read_image(str(source), draft=draft, high_bit=high_bit)
    try:
        return preprocessor.to_uint8(image)
    except ImageReadError as err:  # the geometry's own limits (a 1 x 400,000 strip) name the file too
        raise ImageReadError(name or (source if isinstance(source, str) else "image"), err.reason) from None


class ItemViews(torch.utils.data.Dataset):
    """Dataset positions -> ``(position, uint8 view, "")``, or ``(position, None, reason)`` for an unreadable item
    (``strict``: an :class:`ImageReadError` naming the item instead). Picklable for loader workers; items are read
    through ``dataset.load_image`` (datasets of derived views override it)."""

    def __init__(self, dataset: ImageDataset, positions: list[int], preprocessor: ImagePreprocessor,
                 draft: int | None = None, strict: bool = False) -> None:
        self.dataset, self.positions, self.preprocessor = dataset, positions, preprocessor
        self.draft, self.strict = draft, strict

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        pos = self.positions[i]
        try:
            image = self.dataset.load_image(pos, draft=self.draft, high_bit=self.preprocessor.cfg.high_bit)
            return pos, view_of(image, self.preprocessor), ""
        except ImageReadError as err:
            reason = err.reason
        except Exception as err:  # noqa: BLE001 - a decoder's MemoryError, NotImplementedError...: name it
            reason = f"{type(err).__name__}: {err}"
        if self.strict:
            raise ImageReadError(self.dataset.items[pos], reason)
        return pos, None, reason


def collate_views(batch):
    """Loader batches as (readable positions, uint8 pixels (B, 3, S, S) or None, [(position, reason)...])."""
    ok = [(p, t) for p, t, _ in batch if t is not None]
    failed = [(p, e) for p, t, e in batch if t is None]
    return [p for p, _ in ok], (torch.stack([t for _, t in ok]) if ok else None), failed


def view_loader(dataset: ImageDataset, preprocessor: ImagePreprocessor, positions: list[int] | None = None,
                batch_size: int = 64, num_workers: int = 0, draft: int | None = None, pin_memory: bool = False,
                batches: list[list[int]] | None = None, strict: bool = False,
                generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
    """A loader of :func:`collate_views` batches over ``positions`` (default: all) in order, or over ``batches``
    (lists of dataset positions, each one batch: fine-tuning's plan).

    Args:
        num_workers: loader processes (0: this process); ``pin_memory``: for a CUDA copy.
        strict: an unreadable item stops the loader with its name (training) instead of being reported.
        generator: the loader's own random source (fine-tuning: never torch's global RNG).
    """
    if batches is not None:  # ItemViews over every position, so a batch of positions indexes it directly
        views = ItemViews(dataset, list(range(len(dataset))), preprocessor, draft, strict)
        return torch.utils.data.DataLoader(views, batch_sampler=batches, num_workers=num_workers,
                                           collate_fn=collate_views, pin_memory=pin_memory, generator=generator)
    positions = list(range(len(dataset))) if positions is None else list(positions)
    return torch.utils.data.DataLoader(ItemViews(dataset, positions, preprocessor, draft, strict),
                                       batch_size=batch_size, num_workers=num_workers, collate_fn=collate_views,
                                       pin_memory=pin_memory, generator=generator)
