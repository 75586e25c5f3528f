"""Image folders: ``root/<class>/*.png``, ``root/<split>/<class>/*``, COVID-QU-Ex ``<split>/<class>/images/*``,
or a flat folder of unlabelled images."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import numpy as np

from medvlkit.data.dataset import ImageDataset, one_hot, register_adapter
from medvlkit.data.io import image_kind, is_image_file
from medvlkit.errors import MedvlkitError, NoSplitsError

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"val": ("val", "valid", "validation", "dev"), "test": ("test", "testing"),
                 "train": ("train", "training")}


def scan_images(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files directly in ``folder`` and the entries that look like data but are not read, each with why.

    An image is a regular file with an image extension, or without one whose content is an image (DICOM files are
    often named by their UID alone). Listed, never dropped silently: other files, FIFOs and devices (never opened),
    dangling symbolic links, symbolic link loops, and folders named like images. Sub-folders are the caller's.
    """
    images, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        try:
            st = os.stat(p)  # follows symbolic links
        except OSError as err:
            why = {errno.ENOENT: "a dangling symbolic link", errno.ELOOP: "a symbolic link loop"}.get(
                err.errno or 0, f"unreadable ({err.strerror})")
            skipped.append((str(p), why))
            continue
        if stat.S_ISDIR(st.st_mode):
            if is_image_file(p):
                skipped.append((str(p), "a folder named like an image file"))
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append((str(p), "not a regular file (a FIFO, socket or device): never opened"))
        elif is_image_file(p) or _sniffed_image(p):
            images.append(p)
        else:
            skipped.append((str(p), "not an image (by its name and its first bytes)"))
    return images, skipped


def _sniffed_image(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return image_kind(f.read(132)) is not None
    except OSError:
        return False


def _images_in(folder: Path) -> list[Path]:
    """Image files of a class folder; COVID-QU-Ex keeps them in ``images/`` beside its mask folders."""
    return _scan_class(folder)[0]


def _scan_class(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    inner = folder / "images"
    return scan_images(inner if inner.is_dir() else folder)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_split_dir(root: Path, split: str) -> Path | None:
    """``root/<split>`` under the split's usual spellings (val/valid/validation/dev...)."""
    for name in SPLIT_ALIASES.get(split.lower(), (split,)):
        for cand in (root / name, root / name.capitalize(), root / name.upper()):
            if cand.is_dir():
                return cand
    return None


def _detect(path: Path) -> bool:
    return path.is_dir() and not (path / "descriptions_test.jsonl").exists()


@register_adapter("folder", "image folder: <root>/[<split>/]<class>/[images/]*.png|jpg|dcm..., or flat "
                  "unlabelled images", _detect)
def load_image_folder(path: Path, split: str | None = None, recursive: bool = False) -> ImageDataset:
    """Load a class-per-subfolder image tree (or a flat folder of unlabelled images).

    ``recursive=True`` takes every image file anywhere under the folder, unlabelled (for search indexes). Entries
    that are not read (see :func:`scan_images`) are listed in ``skipped``.
    """
    root = Path(path)
    if recursive:
        files: list[Path] = []
        skipped: list[tuple[str, str]] = []
        for folder, dirs, _ in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found, bad = scan_images(Path(folder))
            files, skipped = files + found, skipped + bad
        if not files:
            raise MedvlkitError(f"--data {root}: no image files anywhere under it")
        return ImageDataset(items=[str(p.resolve()) for p in files], name=root.name, split=split, skipped=skipped)
    if split:
        split_dir = find_split_dir(root, split)
        has_splits = any(find_split_dir(root, s) for s in SPLIT_ALIASES)
        if split_dir is None and not has_splits:
            raise NoSplitsError(f"--data {root} has no split folders (train/val/test), so split '{split}' cannot be "
                                "chosen; pass the folder without a split where the whole folder is meant")
        if split_dir is None:
            raise MedvlkitError(f"--data {root} has no '{split}' split folder; its sub-folders are: "
                                f"{', '.join(p.name for p in _subdirs(root)) or '(none)'}")
        root = split_dir
    flat, flat_skipped = scan_images(root)
    classes = _subdirs(root) if any(_images_in(d) for d in _subdirs(root)) else []
    empty = [d.name for d in classes if not _images_in(d)]
    if empty:  # kept as classes: dropping one would score the rest as if it did not exist (accuracy 1.0 on one)
        logger.warning("%s: class folder(s) %s hold no images; they stay classes with no examples", root,
                       ", ".join(empty))
    if not classes and not flat:
        splits = [d.name for d in _subdirs(root) if any(d.name.lower() in a for a in SPLIT_ALIASES.values())]
        hint = f"; it has split folders {', '.join(splits)}: pass --split" if splits else ""
        raise MedvlkitError(f"--data {root}: no images found (looked for {', '.join(('.png', '.jpg', '.dcm'))}... "
                            f"directly and in class sub-folders){hint}")
    if not classes:
        return ImageDataset(items=[str(p.resolve()) for p in flat], name=Path(path).name, split=split,
                            skipped=flat_skipped)
    items, idx, skipped = [], [], []
    for c, d in enumerate(classes):
        in_class, bad = _scan_class(d)
        items += [str(p.resolve()) for p in in_class]
        idx += [c] * len(in_class)
        skipped += bad
    return ImageDataset(items=items, name=Path(path).name, classnames=[d.name for d in classes],
                        labels=one_hot(np.asarray(idx), len(classes)), split=split,
                        meta={"root": str(root.resolve())}, skipped=skipped)


_GLOB_CHARS = ("*", "?", "[")


def image_files(spec: str | Path) -> list[Path] | None:
    """The image files ``spec`` names: one image file, a comma-separated list of them, or a glob pattern
    (``xrays/*.png``, quoted so the shell leaves it); None when ``spec`` is none of these (a folder, a CSV...).

    Raises:
        MedvlkitError: a list or pattern that names a missing file, a file that is not an image, or nothing at all.
    """
    import glob

    text = str(spec)
    single = Path(text).expanduser()
    if single.is_file():
        return [single] if is_image_file(single) or _sniffed_image(single) else None
    if single.exists():
        return None
    if any(c in text for c in _GLOB_CHARS):
        paths = [Path(p) for p in sorted(glob.glob(str(single)))]
        if not paths:
            raise MedvlkitError(f"--data {text}: the pattern matches no file")
    elif "," in text:
        paths = [Path(p.strip()).expanduser() for p in text.split(",") if p.strip()]
    else:
        return None
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise MedvlkitError(f"--data {text}: no such file: {', '.join(missing[:3])}")
    odd = [str(p) for p in paths if not (p.is_file() and (is_image_file(p) or _sniffed_image(p)))]  # folders too
    if odd:
        raise MedvlkitError(f"--data {text}: not image files: {', '.join(odd[:3])} (a list or pattern names image "
                            "files; give a folder or a CSV on its own)")
    return paths


def _detect_files(path: Path) -> bool:
    try:
        return image_files(path) is not None
    except MedvlkitError:
        return True  # a list or pattern with a fault: loading it says which


@register_adapter("files", "image files, unlabelled: one image, a comma-separated list, or a quoted glob pattern "
                  "('xrays/*.png')", _detect_files, priority=5)
def load_image_files(path: Path, split: str | None = None) -> ImageDataset:
    """One image file, or several (a comma-separated list or a glob pattern), as an unlabelled dataset in the order
    given (a pattern's matches sorted)."""
    files = image_files(path)
    if files is None:
        raise MedvlkitError(f"--data {path}: not an image file, a comma-separated list of them or a glob pattern")
    if split:
        raise NoSplitsError(f"--data {path}: image files have no splits, so split '{split}' cannot be chosen; leave "
                            "--split out")
    name = files[0].stem if len(files) == 1 else "files"
    return ImageDataset(items=[str(p.resolve()) for p in files], name=name, split=None)
