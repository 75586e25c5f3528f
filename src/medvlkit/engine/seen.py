"""Images a model was trained on, kept out of what is scored or chosen on.

A number computed on images the model trained on is not a held-out number: a probe's C or a fine-tune's best epoch
chosen on them is chosen on memorised images, and a test metric on them is inflated. Every verb that chooses or
scores (``probe``, ``finetune``, ``eval``, ``benchmark``, ``zeroshot``, ``retrieve``) passes its validation and test
data through :func:`set_aside_seen`: images in the model's training manifest
(:mod:`medvlkit.models.training_data`) are set aside, with a warning saying how many, unless the user passes
``--allow-seen``; either way ``result.json`` records it (``seen_by_model``). ``audit --model`` reports the overlap
of every split (:func:`seen_mask` on the audit's own pixel hashes).

Decoded-pixel hashes are computed once per file (its path, size and modification time) and kept in
``$MEDVLKIT_CACHE/pixel_hashes/``; the audit's scan fills the same store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.io import pixel_hash
from medvlkit.data.items import split_view
from medvlkit.engine.cache import _write_atomic, item_key
from medvlkit.errors import MedvlkitError
from medvlkit.files import default_cache_dir
from medvlkit.models.training_data import TrainingManifest, id_keys

logger = logging.getLogger(__name__)
ROLES = {"test": "scored", "val": "used to choose"}


class PixelHashStore:
    """Decoded-pixel hashes by item (keyed like the embedding cache: path, size, mtime), in 256 JSON shards."""

    def __init__(self, root: Path | None = None) -> None:
        self.folder = Path(root or default_cache_dir()) / "pixel_hashes"
        self._shards: dict[str, dict[str, str]] = {}

    def _shard(self, key: str) -> dict[str, str]:
        name = key[:2]
        if name not in self._shards:
            path = self.folder / f"{name}.json"
            try:
                self._shards[name] = json.loads(path.read_text()) if path.is_file() else {}
            except (OSError, json.JSONDecodeError):
                self._shards[name] = {}  # a damaged shard is recomputed, never trusted
        return self._shards[name]

    def get(self, items: list[str]) -> dict[str, str]:
        """Item -> pixel hash for the items already hashed."""
        out = {}
        for item in items:
            key = item_key(item)
            value = self._shard(key).get(key)
            if value:
                out[item] = value
        return out

    def put(self, hashes: dict[str, str]) -> None:
        """Remember ``item -> pixel hash`` (written atomically, shard by shard)."""
        touched = set()
        for item, value in hashes.items():
            key = item_key(item)
            self._shard(key)[key] = value
            touched.add(key[:2])
        for name in touched:
            body = json.dumps(self._shards[name])
            _write_atomic(self.folder, f"{name}.json", lambda f, b=body: f.write(b.encode()))


class _Hashes(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageDataset, positions: list[int]) -> None:
        self.dataset, self.positions = dataset, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        pos = self.positions[i]
        try:
            return pos, pixel_hash(self.dataset.load_image(pos))
        except Exception:  # noqa: BLE001 - an unreadable image was not seen by anyone; the reading verb reports it
            return pos, ""


def pixel_hashes(dataset: ImageDataset, num_workers: int = 0, progress: bool = True,
                 cache_dir: Path | None = None) -> list[str]:
    """The decoded-pixel hash of every item ('' for an unreadable one), from the store where known, else computed
    in loader workers and stored."""
    from tqdm.auto import tqdm

    store = PixelHashStore(cache_dir)
    known = store.get(list(dataset.items))
    todo = [i for i, item in enumerate(dataset.items) if item not in known]
    if todo:
        loader = torch.utils.data.DataLoader(_Hashes(dataset, todo), batch_size=64, num_workers=num_workers,
                                             collate_fn=list, generator=torch.Generator())  # the global RNG untouched
        new = {}
        with tqdm(total=len(todo), desc="hash pixels (training-data check)", unit="img",
                  disable=not progress) as bar:
            for batch in loader:
                for pos, value in batch:
                    if value:
                        new[dataset.items[pos]] = value
                bar.update(len(batch))
        store.put(new)
        known |= new
    return [known.get(item, "") for item in dataset.items]


def seen_mask(dataset: ImageDataset, manifest: TrainingManifest, hashes: list[str] | None = None,
              num_workers: int = 0, progress: bool = True, cache_dir: Path | None = None) -> np.ndarray:
    """(N,) bool: which items are in ``manifest`` (by decoded pixels, or by file name for an ``ids`` manifest).
    ``hashes``: the items' pixel hashes when the caller has them (the audit)."""
    if manifest.kind == "ids":
        return np.array([any(k in manifest.values for k in id_keys(split_view(item)[0].split("::")[-1]))
                         for item in dataset.items], dtype=bool)
    hashes = hashes if hashes is not None else pixel_hashes(dataset, num_workers, progress, cache_dir)
    return np.array([bool(h) and h in manifest.values for h in hashes], dtype=bool)


def manifest_of(model, training_manifest: str | None = None) -> TrainingManifest | None:
    """The manifest a user named (``--training-manifest``), else the one the model declares, else None."""
    if training_manifest:
        from medvlkit.models.training_data import read_manifest

        return read_manifest(training_manifest)
    return model.training_manifest() if hasattr(model, "training_manifest") else None


def seen_record(manifest: TrainingManifest | None, role: str, n: int, n_seen: int, allow_seen: bool) -> dict:
    """What ``result.json`` says (``seen_by_model``) of one split's images against the model's training data."""
    if manifest is None:
        return {"declared": False, "role": role, "n_images": n,
                "note": "the model declares no training data: whether it saw these images is unknown"}
    return {"declared": True, "role": role, "n_images": n, "n_seen": n_seen, "allow_seen": allow_seen,
            "set_aside": 0 if allow_seen else n_seen, "training_data": manifest.record()}


def set_aside_seen(dataset: ImageDataset, model, role: str = "test", allow_seen: bool = False,
                   training_manifest: str | None = None, num_workers: int = 0, progress: bool = True,
                   cache_dir: Path | None = None) -> ImageDataset:
    """``dataset`` without the images ``model`` was trained on (``role``: ``test`` for scored data, ``val`` for
    data that chooses a hyper-parameter or checkpoint); ``meta["seen_by_model"]`` records it either way.

    With ``allow_seen`` the images stay and a warning says the number is not a held-out one.

    Raises:
        MedvlkitError: every image was seen (nothing held out is left to score or choose on).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    manifest = manifest_of(model, training_manifest)
    mask = (np.zeros(len(dataset), dtype=bool) if manifest is None or not len(dataset)
            else seen_mask(dataset, manifest, None, num_workers, progress, cache_dir))
    out = dataset
    n_seen = int(mask.sum())
    name = getattr(model, "name", "the model")
    if n_seen and allow_seen:
        logger.warning("%s: %d of %d image(s) %s were in %s's training data and are kept (--allow-seen): numbers "
                       "on them are not held-out numbers", dataset.full_name, n_seen, len(dataset), ROLES[role], name)
    elif n_seen:
        assert manifest is not None  # images are seen only where the model declares its training data
        if n_seen == len(dataset):
            raise MedvlkitError(f"{dataset.full_name}: all {n_seen} images {ROLES[role]} here were in {name}'s "
                                f"training data ({manifest.path}), so nothing held out is left; use data the model "
                                "did not train on (e.g. its test split), or pass --allow-seen to use them anyway "
                                "(recorded in result.json)")
        out = dataset.subset(np.flatnonzero(~mask))
        logger.warning("%s: %d of %d image(s) %s were in %s's training data: set aside (%d left; pass "
                       "--allow-seen to keep them)", dataset.full_name, n_seen, len(dataset), ROLES[role], name,
                       len(out))
    out.meta = dict(out.meta) | {"seen_by_model": seen_record(manifest, role, len(dataset), n_seen, allow_seen)}
    return out


def holdout_without_seen(dataset: ImageDataset, model, items: list[str], train_idx: np.ndarray, val_idx: np.ndarray,
                         allow_seen: bool = False, training_manifest: str | None = None, num_workers: int = 0,
                         progress: bool = True, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A validation part held out of a train split (``items[val_idx]``), without the images the model trained on:
    those go back to the training part (they may train; they may not choose). Returns (train_idx, val_idx, the
    record result.json keeps).

    Raises:
        MedvlkitError: every held-out image was seen (raise ``--val-fraction``, or give a val split).
    """
    manifest = manifest_of(model, training_manifest)
    if manifest is None:
        return train_idx, val_idx, seen_record(None, "val", len(val_idx), 0, allow_seen)
    by_item = dict(zip(dataset.items, seen_mask(dataset, manifest, None, num_workers, progress, cache_dir)))
    seen = np.array([bool(by_item.get(items[i], False)) for i in val_idx], dtype=bool)
    record = seen_record(manifest, "val", len(val_idx), int(seen.sum()), allow_seen)
    name = getattr(model, "name", "the model")
    if not seen.any() or allow_seen:
        if seen.any():
            logger.warning("%d of %d held-out validation image(s) were in %s's training data and still choose "
                           "(--allow-seen)", int(seen.sum()), len(val_idx), name)
        return train_idx, val_idx, record
    if seen.all():
        raise MedvlkitError(f"all {len(val_idx)} validation images held out of {dataset.full_name} were in {name}'s "
                            "training data, so nothing unseen is left to choose on; give a validation split the "
                            "model did not train on (--val-split), or pass --allow-seen (recorded in result.json)")
    logger.warning("%d of %d held-out validation image(s) were in %s's training data: they train instead of "
                   "choosing (%d choose; pass --allow-seen to keep them)", int(seen.sum()), len(val_idx), name,
                   int((~seen).sum()))
    return np.concatenate([train_idx, val_idx[seen]]), val_idx[~seen], record
