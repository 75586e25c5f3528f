"""Training batches for fine-tuning: which items form each step's global batch, their captions, their pixels.

The plan of an epoch depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np
import torch

from medvlkit.data.dataset import ImageDataset
from medvlkit.engine.pixels import view_loader
from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ImagePreprocessor
from medvlkit.tasks.caption import label_caption_pools


def caption_pools(dataset: ImageDataset) -> tuple[list[list[str]], list[str]]:
    """Candidate captions per item and a group key per item.

    Captioned data: the item's own caption, grouped by item. Labelled data (CLIP_COVID's recipe): the class
    phrasings of the item's label (a shipped prompt set's when one covers the classes), grouped by label, so
    images of one class count as positives for each other in the contrastive targets.

    Raises:
        MedvlkitError: the data has neither captions nor labels.
    """
    if dataset.texts:
        return [[t] for t in dataset.texts], list(dataset.items)
    if not dataset.has_labels:
        raise MedvlkitError(f"dataset '{dataset.name}' has neither captions nor labels; contrastive fine-tuning "
                            "needs image-caption pairs (write captions with `medvlkit caption`)")
    pools, present = label_caption_pools(dataset)
    return pools, ["|".join(p) for p in present]


def pick_captions(pools: list[list[str]], batch: list[int], seed: int, epoch: int) -> list[str]:
    """One caption per item of a batch, chosen by (seed, epoch, item) only."""
    return [pools[i][np.random.default_rng((seed, epoch, i)).integers(len(pools[i]))] for i in batch]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches of one epoch: a seeded permutation cut into full batches (the remainder is dropped, so
    every contrastive batch has the same size; a dataset smaller than one batch gives one batch)."""
    order = np.random.default_rng((seed, epoch, 7919)).permutation(n).tolist()
    if n < batch_size:
        return [order]
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def batch_loader(dataset: ImageDataset, preprocessor: ImagePreprocessor, batches: list[list[int]],
                 workers: int, seed: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A loader yielding (indices, uint8 pixels, []) for each given batch of item indices, in order, through the one
    pixel path (:func:`medvlkit.engine.pixels.view_loader`; the training step normalises them on the device). An
    unreadable image stops training with the file's name.

    Its worker seeds come from a generator of its own (``seed``), so creating it draws nothing from torch's
    global RNG (which dropout uses): a resumed run sees the same dropout masks as an uninterrupted one.
    """
    return view_loader(dataset, preprocessor, batches=batches, num_workers=workers, pin_memory=pin_memory,
                       strict=True, generator=torch.Generator().manual_seed(seed))
