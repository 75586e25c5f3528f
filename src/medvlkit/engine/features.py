"""The embedding engine: image and text embeddings, batched, read by the one pixel path in loader workers, in
inference mode, with the on-disk cache, a progress bar, and ranks sharing the work under torchrun. Tasks call it;
it calls no task (the ``embed`` task and its writer live in :mod:`medvlkit.tasks.embedding`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medvlkit.data.dataset import ImageDataset
from medvlkit.engine.cache import EmbeddingCache, TextEmbeddingCache, item_key
from medvlkit.engine.distributed import World, gather_objects
from medvlkit.engine.interrupt import StopRequest
from medvlkit.engine.options import ON_ERROR
from medvlkit.engine.pixels import view_loader
from medvlkit.engine.scores import check_finite
from medvlkit.errors import ImageReadError, MedvlkitError
from medvlkit.models.base import ModelBase

logger = logging.getLogger(__name__)
_NO_STOP = SimpleNamespace(requested=False)  # stands in for a StopRequest where none is installed
_FLUSH_EVERY = 2048  # write a cache shard at least every this many new embeddings...
_FLUSH_SECONDS = 60.0  # ...or this often ($MEDVLKIT_CACHE_FLUSH_SECONDS), and always when a run stops


class _PendingShard:
    """New vectors not yet in the cache: written as one shard every ``_FLUSH_EVERY`` vectors or
    ``$MEDVLKIT_CACHE_FLUSH_SECONDS`` seconds, whichever comes first, and by :meth:`flush` when a run ends, fails or
    is interrupted. Only a SIGKILL loses anything: at most the last interval's work."""

    def __init__(self, store: EmbeddingCache | None, keys: list[str], vectors: dict[int, np.ndarray]) -> None:
        self.store, self.keys, self.vectors = store, keys, vectors
        self.positions: list[int] = []
        self.seconds = float(os.environ.get("MEDVLKIT_CACHE_FLUSH_SECONDS", _FLUSH_SECONDS))
        self.last = time.monotonic()

    def add(self, positions: list[int]) -> None:
        self.positions += positions
        if len(self.positions) >= _FLUSH_EVERY or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.store is not None and self.positions:
            self.store.put([self.keys[i] for i in self.positions], np.stack([self.vectors[i] for i in self.positions]))
        self.positions, self.last = [], time.monotonic()


def _failures(dataset: ImageDataset, failed: list[tuple[int, str]], on_error: str) -> list[tuple[str, str]]:
    """Unreadable items of a batch: raised (``fail``) or logged and returned to be listed (``skip``)."""
    for pos, reason in failed:
        if on_error == "fail":
            raise ImageReadError(dataset.items[pos], reason + " (pass --on-error skip to skip such files)")
        logger.warning("skipping unreadable image %s: %s", dataset.items[pos], reason)
    return [(dataset.items[pos], reason) for pos, reason in failed]


@dataclass
class ImageEmbeddings:
    """Embeddings of the readable items of a dataset.

    Attributes:
        vectors: (N_ok, D) float32, L2-normalised.
        indices: (N_ok,) positions of those items in the dataset.
        items: the N_ok item ids.
        skipped: (item, reason) for every item that could not be read, and every entry the dataset lists as not
            read (``ImageDataset.skipped``).
        n_cached: how many vectors came from the cache.
    """

    vectors: np.ndarray
    indices: np.ndarray
    items: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_cached: int = 0


def _check_loader_args(on_error: str, batch_size: int, num_workers: int) -> None:
    if on_error not in ON_ERROR:
        raise MedvlkitError(f"--on-error {on_error}: valid options: {', '.join(ON_ERROR)}")
    if batch_size < 1 or num_workers < 0:
        raise MedvlkitError(f"--batch-size {batch_size} / --workers {num_workers}: need a batch size >= 1 and "
                            "workers >= 0")


def _encode_all(model: ModelBase, dataset: ImageDataset, loader: Any, vectors: dict[int, np.ndarray],
                pending: _PendingShard,
                bar: Any,
                normalize: bool, on_error: str, stoppable: bool) -> list[tuple[str, str]]:
    """Encode what ``loader`` yields into ``vectors`` (and ``pending`` for the cache); returns the unreadable items.
    With ``stoppable``, Ctrl-C stops after the batch in flight (``KeyboardInterrupt`` then)."""
    skipped: list[tuple[str, str]] = []
    pre, device = model.image_preprocessor, model.device
    with StopRequest() if stoppable else contextlib.nullcontext(_NO_STOP) as stop:
        try:
            for positions, pixels, failed in loader:
                skipped += _failures(dataset, failed, on_error)
                if pixels is not None:
                    pixels = pre.normalize(pixels.to(device, non_blocking=True))
                    out = model.encode_image(pixels, normalize=normalize).float().cpu().numpy()
                    check_finite(out, f"image embeddings of {dataset.items[positions[0]]}...")
                    vectors.update(zip(positions, out))
                    pending.add(positions)
                bar.update(len(positions) + len(failed))
                if stop.requested:
                    raise KeyboardInterrupt
        except Exception:
            if stop.requested:  # loader workers stopped by the same Ctrl-C
                raise KeyboardInterrupt from None
            raise
    return skipped


def _cached_vectors(model: ModelBase, dataset: ImageDataset, cache: bool, cache_dir: str | None,
                    fast_decode: bool) -> tuple[Any, ...]:
    """(cache store or None, item keys, {key: vector} found, {position: vector} found) for ``dataset``."""
    # vectors from another engine or another decode agree within 1e-4, not bit for bit: each has its own entries
    fingerprint = (model.fingerprint() + ("|fast-decode" if fast_decode else "")
                   + ("" if model.engine == "torch" else f"|engine={model.engine}"))
    store = EmbeddingCache(fingerprint, cache_dir, model.embed_dim) if cache else None
    keys = [item_key(it) for it in dataset.items]
    found = store.get(keys) if store else {}
    vectors: dict[int, np.ndarray] = {i: found[k] for i, k in enumerate(keys) if k in found}
    return store, keys, found, vectors


def _share_out(vectors: dict[int, np.ndarray], n: int, world: World) -> list[int]:
    """This rank's share of the positions no rank has in its cache (ranks may hold different, node-local caches:
    every rank shares out the same list the same way)."""
    cached = set(vectors)
    if world.size > 1:
        cached = set().union(*gather_objects(cached, world))
    return world.shard([i for i in range(n) if i not in cached])


@torch.inference_mode()
def embed_images(model: ModelBase, dataset: ImageDataset, batch_size: int = 64, num_workers: int = 0,
                 cache: bool = True, cache_dir: str | None = None, on_error: str = "fail",
                 progress: bool = True, normalize: bool = True, world: World | None = None,
                 fast_decode: bool = False) -> ImageEmbeddings:
    """Encode every image of ``dataset`` with ``model`` (cached vectors are reused, not recomputed). The one
    embedding loop: every task, the probe and fine-tuning's validation (cache off: its weights change) use it.

    Args:
        model: any medvlkit model (``create_model``).
        dataset: the images.
        batch_size: images per forward pass.
        num_workers: loader processes reading and preprocessing images (0 = in this process).
        cache: read and write the on-disk embedding cache.
        cache_dir: cache root (default ``$MEDVLKIT_CACHE`` or ``~/.cache/medvlkit``).
        on_error: ``fail`` raises on the first unreadable image; ``skip`` records it in ``skipped``.
        progress: show a progress bar.
        normalize: unit vectors (the shared space); False gives the raw embeddings a classifier head reads, and
            never touches the cache (it holds unit vectors).
        fast_decode: decode large JPEGs at a reduced scale (:func:`medvlkit.data.io.read_image`'s ``draft``, at
            least twice the model's input size); cached apart from full decodes.
        world: under torchrun, this process's rank: each rank embeds its contiguous share of the images no rank has
            in its cache and writes its own cache shards; the vectors are gathered over the process group, and rank 0
            returns the whole result in dataset order (every item embedded or listed as unreadable, checked), the
            other ranks their own share. Every rank must call this together.

    Returns:
        :class:`ImageEmbeddings` in dataset order, without the skipped items.

    With the cache on, Ctrl-C stops after the batch in flight with everything computed so far in the cache; without
    it, Ctrl-C is an ordinary ``KeyboardInterrupt`` (a training loop around it handles it).
    """
    _check_loader_args(on_error, batch_size, num_workers)
    store, keys, found, vectors = _cached_vectors(model, dataset, cache and normalize, cache_dir, fast_decode)
    world = world or World()
    todo = _share_out(vectors, len(dataset), world)
    pre, device = model.image_preprocessor, model.device
    draft = pre.cfg.decode_size() if fast_decode else None
    loader = view_loader(dataset, pre, todo, batch_size, num_workers, draft, pin_memory=device.type == "cuda")
    bar = tqdm(total=len(todo) + len(vectors), initial=len(vectors), desc="embed images", unit="img",
               disable=not (progress and world.is_main))
    pending = _PendingShard(store, keys, vectors)
    try:
        skipped = _encode_all(model, dataset, loader, vectors, pending, bar, normalize, on_error, store is not None)
    except KeyboardInterrupt:
        if store is None:
            raise
        raise MedvlkitError(f"interrupted after {len(vectors) - len(found)} new embeddings, all written to the cache: "
                            "run the same command again to continue where it stopped") from None
    finally:
        pending.flush()  # an error or an interrupt keeps everything computed so far (before the error propagates)
        bar.close()
    if world.size > 1:
        vectors, skipped = _merge_ranks(vectors, skipped, world)
        if not world.is_main:  # rank 0 holds the whole result; the others return their own share
            return _result(dataset, vectors, skipped, len(found), check=False)
    return _result(dataset, vectors, skipped, len(found))


def _result(dataset: ImageDataset, vectors: dict[int, np.ndarray], failed: list[tuple[str, str]], n_cached: int,
            check: bool = True) -> ImageEmbeddings:
    """The embeddings in dataset order. ``check``: every item was embedded or reported unreadable, exactly once (a
    merge that lost images would otherwise return fewer vectors with nothing skipped)."""
    if check and len(vectors) + len(failed) != len(dataset):
        raise MedvlkitError(f"embedding '{dataset.name}': {len(vectors)} images embedded and {len(failed)} unreadable "
                            f"make {len(vectors) + len(failed)}, not the dataset's {len(dataset)}; nothing is "
                            "written from an incomplete merge (a bug: please report it)")
    skipped = list(dataset.skipped) + failed  # entries the adapter found but does not read, listed with the rest
    order = np.array(sorted(vectors), dtype=int)
    if len(order) == 0:
        raise MedvlkitError(f"no image of '{dataset.name}' could be read ({len(skipped)} skipped); "
                            f"first error: {skipped[0][0]}: {skipped[0][1]}" if skipped else "dataset is empty")
    return ImageEmbeddings(vectors=np.stack([vectors[i] for i in order]).astype(np.float32), indices=order,
                           items=[dataset.items[i] for i in order], skipped=skipped, n_cached=n_cached)


def _merge_ranks(vectors: dict[int, np.ndarray], skipped: list[Any],
                 world: World) -> tuple[dict[int, np.ndarray], list[Any]]:
    """Every rank's vectors and unreadable files, gathered on rank 0 over the process group (never through the file
    system: a node-local cache holds only its own node's shards). Other ranks get their own back."""
    positions = np.array(sorted(vectors), dtype=np.int64)
    block = np.stack([vectors[i] for i in positions]).astype(np.float32) if len(positions) else None
    parts = gather_objects((positions, block, skipped), world, to_main=True)
    if not world.is_main:
        return vectors, skipped
    merged: dict[int, np.ndarray] = {}
    all_skipped: list[tuple[str, str]] = []
    for pos, vec, bad in parts:
        if vec is not None:
            merged.update(zip(pos.tolist(), vec))
        all_skipped += bad
    return merged, all_skipped


@torch.inference_mode()
def embed_texts(model: ModelBase, texts: list[str], batch_size: int = 256, cache: bool = False,
                cache_dir: str | None = None, progress: bool = False) -> np.ndarray:
    """Encode texts (tokenised to the model's context length). Returns (N, D) float32, L2-normalised.

    Args:
        cache: read and write the on-disk text cache (keyed by the model's fingerprint, the texts and the batch
            size): prompt sets are encoded once per model. Off by default: weights that change in memory
            (fine-tuning) keep their fingerprint.
        cache_dir: cache root (default ``$MEDVLKIT_CACHE`` or ``~/.cache/medvlkit``).
        progress: a progress bar with an ETA (captions by the thousand, for retrieval), when there is more than one
            batch.
    """
    model.require_text("text embedding")
    if not texts:
        raise MedvlkitError("no texts to embed")
    store = TextEmbeddingCache(model.fingerprint(), cache_dir) if cache else None
    hit = store.get(texts, batch_size, model.embed_dim) if store else None
    if hit is not None:
        return hit
    starts = range(0, len(texts), batch_size)
    chunks = [model.encode_text(model.tokenize(texts[i:i + batch_size])).float().cpu().numpy()
              for i in tqdm(starts, desc="embed texts", unit="batch", disable=not progress or len(starts) < 2)]
    out = np.concatenate(chunks).astype(np.float32)
    check_finite(out, "text embeddings")
    if store:
        store.put(texts, batch_size, out)
    return out
