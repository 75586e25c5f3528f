"""Training batches for fine-tuning: which items form each step's global batch, their captions, their pixels.

The plan of an epoch depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np
import torch

from medvlkit.caption import label_caption_pools
from medvlkit.data.dataset import ImageDataset
from medvlkit.errors import ImageReadError, MedvlkitError
from medvlkit.models.base import ImagePreprocessor


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


class PixelData(torch.utils.data.Dataset):
    """Item index -> (index, preprocessed pixels). Unreadable images stop training with the file's name."""

    def __init__(self, dataset: ImageDataset, preprocessor: ImagePreprocessor) -> None:
        self.dataset, self.preprocessor = dataset, preprocessor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        try:
            return index, self.preprocessor.to_uint8(self.dataset.load_image(index))  # normalised on the device
        except ImageReadError as err:
            raise ImageReadError(self.dataset.items[index], err.reason) from None
        except Exception as err:  # noqa: BLE001 - name the file, whatever the reader raised
            raise ImageReadError(self.dataset.items[index], f"{type(err).__name__}: {err}") from err


def _collate(batch):
    return [i for i, _ in batch], torch.stack([t for _, t in batch])


def batch_loader(dataset: ImageDataset, preprocessor: ImagePreprocessor, batches: list[list[int]],
                 workers: int, seed: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A loader yielding (indices, uint8 pixels) for each given batch of item indices, in order (the training step
    normalises them on the device: ``ImagePreprocessor.normalize``).

    Its worker seeds come from a generator of its own (``seed``), so creating it draws nothing from torch's
    global RNG (which dropout uses): a resumed run sees the same dropout masks as an uninterrupted one.
    """
    return torch.utils.data.DataLoader(PixelData(dataset, preprocessor), batch_sampler=batches, num_workers=workers,
                                       collate_fn=_collate, persistent_workers=False, pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(seed))
