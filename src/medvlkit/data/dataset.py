"""The sample contract shared by every adapter, and the adapter registry.

A dataset is a list of image items with, optionally, labels and captions:

- ``items[i]``: absolute path of an image file, or ``<file.npz>::<array>[<index>]``.
- ``labels``: float array (N, C): 1 present, 0 absent, NaN unknown (uncertain labels after the policy).
- ``classnames[c]``: name of column c of ``labels``.
- ``multilabel``: False when every row has exactly one 1 (one class per image).
- ``texts[i]``: the caption of item i, for image-caption data.
- ``groups[i]``: the patient (or study) item i belongs to, where the adapter knows it; held-out validation keeps
  each group on one side (``data/splits.py``).
- ``skipped``: (entry, why) for what the adapter found but does not read (a file that is not an image, a FIFO, a
  dangling link...): every task lists them with its unreadable images, never drops them silently.
- ``attributes[name][i]``: per-item metadata (age, sex, view, scanner, site...) as text, None where unknown, where
  the adapter knows it (MedPix); subgroup analysis reads it. Kept aligned with ``items`` by :meth:`subset`.
- ``meta["domain"]``: the kind of image the data holds (``chest x-ray``, ``ultrasound``...), where the adapter knows
  it (MedMNIST files); a prompt set of another domain is never chosen for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medvlkit.data.io import read_image
from medvlkit.errors import MedvlkitError


@dataclass
class ImageDataset:
    """Images with optional labels and captions (see the module docstring for every field)."""

    items: list[str]
    name: str
    classnames: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    multilabel: bool = False
    texts: list[str] | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    groups: list[str | None] | None = None  # None inside: an item of no group (merged data)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    attributes: dict[str, list[str | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.items)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.float32)
            if self.labels.shape != (n, len(self.classnames)):
                raise ValueError(f"labels shape {self.labels.shape} != (items {n}, classes {len(self.classnames)})")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"{len(self.texts)} texts for {n} items")
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"{len(self.groups)} group ids for {n} items")
        for name, values in self.attributes.items():
            if len(values) != n:
                raise ValueError(f"attribute '{name}': {len(values)} values for {n} items")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full_name(self) -> str:
        """``name/split`` (``name`` without a split): how results name the data they were computed on."""
        return self.name + (f"/{self.split}" if self.split else "")

    @property
    def domain(self) -> str | None:
        """The kind of image the data holds, where known (``meta["domain"]``)."""
        return self.meta.get("domain")

    @property
    def has_labels(self) -> bool:
        return self.labels is not None and len(self.classnames) > 0

    @property
    def label_matrix(self) -> np.ndarray:
        """The labels (N, classes), for code that has checked :attr:`has_labels`; a dataset without them raises.

        Raises:
            MedvlkitError: the dataset has no labels.
        """
        if self.labels is None or not self.classnames:
            raise MedvlkitError(f"dataset '{self.name}' has no labels (give a labelled split or a labels file)")
        return self.labels

    def label_text(self, index: int) -> str:
        """The class name(s) of item ``index`` (``|``-joined for multi-label data), or empty without labels."""
        if not self.has_labels:
            return ""
        return "|".join(c for c, v in zip(self.classnames, self.label_matrix[index]) if v == 1)

    def load_image(self, index: int, draft: int | None = None, high_bit: str = "robust") -> Image.Image:
        """Read item ``index`` (raises ``ImageReadError`` naming the file); ``draft``, ``high_bit``: see
        :func:`read_image`."""
        return read_image(self.items[index], draft=draft, high_bit=high_bit)

    def targets(self) -> np.ndarray:
        """Class index per item for single-label data. (N,) int."""
        if not self.has_labels or self.multilabel:
            raise MedvlkitError(f"dataset '{self.name}' has no single-label targets")
        return np.nanargmax(self.label_matrix, axis=1)

    def subset(self, keep: np.ndarray | list[int]) -> ImageDataset:
        """A copy restricted to the given item indices (order kept)."""
        keep = np.asarray(keep, dtype=int)
        return ImageDataset(
            items=[self.items[i] for i in keep], name=self.name, classnames=list(self.classnames),
            labels=None if self.labels is None else self.labels[keep], multilabel=self.multilabel,
            texts=None if self.texts is None else [self.texts[i] for i in keep], split=self.split,
            meta=dict(self.meta), groups=None if self.groups is None else [self.groups[i] for i in keep],
            skipped=list(self.skipped),
            attributes={k: [v[i] for i in keep] for k, v in self.attributes.items()})


@dataclass(frozen=True)
class Adapter:
    """A registered dataset format: how to recognise it and how to load it."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[..., ImageDataset]
    priority: int = 0


_ADAPTERS: dict[str, Adapter] = {}


Loader = Callable[..., "ImageDataset"]  # fn(path, split=None, **options) -> ImageDataset


def register_adapter(name: str, description: str, detect: Callable[[Path], bool],
                     priority: int = 0) -> Callable[[Loader], Loader]:
    """Decorator registering a loader ``fn(path, split=None, **options) -> ImageDataset``.

    ``--format auto`` asks the adapters' ``detect`` in order of ``priority``, highest first (ties: the order they
    were registered): the built-ins use 20 for formats recognised by a specific file (MedPix's descriptions,
    a caption column), 10 for a file type (CSV, npz) and 0 for any image folder, so a plugin's adapter for a
    particular folder layout takes precedence over the plain folder with a priority above 0.
    """

    def wrap(fn: Callable[..., ImageDataset]) -> Callable[..., ImageDataset]:
        _ADAPTERS[name] = Adapter(name, description, detect, fn, priority)
        return fn

    return wrap


def list_adapters() -> list[Adapter]:
    """Every registered dataset format, in the order ``--format auto`` tries them."""
    order = {name: i for i, name in enumerate(_ADAPTERS)}
    return sorted(_ADAPTERS.values(), key=lambda a: (-a.priority, order[a.name]))


def load_dataset(path: str | Path, split: str | None = None, format: str = "auto", **options: Any) -> ImageDataset:
    """Load a dataset from a folder or file.

    Args:
        path: an image folder, a CSV/JSONL file, a MedMNIST-style ``.npz``, a MedPix-2.0 folder, image files
            (one image, a comma-separated list of them, or a glob pattern), or a ``dicomweb:`` query of a PACS
            (:func:`medvlkit.data.dicomweb.load_dicomweb`; a string, not a ``Path``).
        split: ``train``, ``val``, ``test`` (or the data's own split names) where the data has splits.
        format: an adapter name from ``medvlkit datasets``, or ``auto`` to detect it.
        **options: adapter options (``path_column``, ``label_columns``, ``uncertain``, ``image_root``...).

    Raises:
        MedvlkitError: the path does not exist, no adapter recognises it, or the adapter rejects it.
    """
    adapters = {a.name: a for a in list_adapters()}
    if isinstance(path, str) and path.startswith("dicomweb:"):  # a PACS query, not a path (data/adapters/dicomweb.py)
        if format not in ("auto", "dicomweb"):
            raise MedvlkitError(f"--format {format}: a dicomweb: URL is read as DICOMweb; leave --format out")
        return _call_refusing_unused(adapters["dicomweb"].load, "dicomweb", "DICOMweb data", path, split, options)
    if str(path).startswith("dicomweb:"):  # a Path() of the URL lost its '//'
        raise MedvlkitError(f"--data {path}: this command does not read DICOMweb data")
    if format == "dicomweb":
        raise MedvlkitError(f"--format dicomweb reads a PACS: give --data dicomweb:http://host:port/dicom-web..., "
                            f"not {path}")
    path = Path(path).expanduser()
    if not path.exists() and not ("files" in adapters and adapters["files"].detect(path)):
        raise MedvlkitError(f"--data {path}: no such file or folder (several image files: a comma-separated list or "
                            "a quoted glob pattern)")
    if format != "auto":
        if format not in adapters:
            raise MedvlkitError(f"--format {format}: unknown; valid options: auto, {', '.join(adapters)}")
        return _load_with(adapters[format], path, split, options)
    for adapter in adapters.values():
        if adapter.detect(path):
            return _load_with(adapter, path, split, options)
    raise MedvlkitError(f"--data {path}: no dataset format recognises it; valid formats: {', '.join(adapters)} "
                        "(see `medvlkit datasets`), or pass --format")


def _load_with(adapter: Adapter, path: Path, split: str | None, options: dict[str, Any]) -> ImageDataset:
    return _call_refusing_unused(adapter.load, adapter.name, path.name, path, split, options)


def _call_refusing_unused(load: Loader, name: str, what: str, path: Any, split: str | None,
                          options: dict[str, Any]) -> ImageDataset:
    """``load(path, split=split, **options)``, refusing options it does not take (set and silently ignored, they
    would leave a user believing, say, that ``--uncertain zeros`` applied)."""
    import inspect

    params = inspect.signature(load).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unused = [k for k, v in options.items() if k not in params and v is not None]
        if unused:
            flags = ", ".join("--" + k.replace("_", "-") for k in unused)
            raise MedvlkitError(f"{flags}: the '{name}' format ({what}) does not use "
                                f"{'this option' if len(unused) == 1 else 'these options'}; leave "
                                f"{'it' if len(unused) == 1 else 'them'} out")
    return load(path, split=split, **options)


def one_hot(indices: np.ndarray, n_classes: int) -> np.ndarray:
    """(N,) int -> (N, C) float32 one-hot label matrix.

    Raises:
        MedvlkitError: an index outside ``0..C-1`` (a negative index would silently become the last class).
    """
    indices = np.asarray(indices)
    if len(indices) and (indices.min() < 0 or indices.max() >= n_classes):
        bad = int(indices[(indices < 0) | (indices >= n_classes)][0])
        raise MedvlkitError(f"label index {bad} is outside the {n_classes} classes (valid: 0..{n_classes - 1})")
    out = np.zeros((len(indices), n_classes), dtype=np.float32)
    out[np.arange(len(indices)), indices] = 1.0
    return out
