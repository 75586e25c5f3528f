"""Splits and samplers: which data trains, which validates, and which few examples a few-shot run sees.

One implementation serves the probe, fine-tuning and the benchmark:

- :func:`load_train` / :func:`load_val`: the training split (all of the data when it has no splits) and the
  validation split (``val_split`` when given, else the data's ``val`` split, else None: hold out part of train).
- :func:`holdout_indices`: a seeded, label-stratified fraction of training *groups* held out, so one patient's
  images never sit on both sides. Groups are, in order: an explicit ``--group-pattern`` regex on the file name;
  the dataset's own ``groups`` (patient ids an adapter read, e.g. a CSV's ``Patient ID`` column); else each image.
- :func:`few_shot_indices`: K seeded examples per class.

Test splits are never read here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Protocol

import numpy as np

from medvlkit.data.dataset import ImageDataset
from medvlkit.errors import MedvlkitError, NoSplitsError

logger = logging.getLogger(__name__)

HOLDOUT = "holdout"


class DatasetLoader(Protocol):
    """What reads a dataset split (:class:`medvlkit.engine.options.DataOptions` is one)."""

    def load(self, data: str | Path, split: str | None = None) -> ImageDataset: ...


def load_train(data: str | Path, opts: DatasetLoader, split: str = "train") -> ImageDataset:
    """The training split; all of the data (with a warning) when it has no splits."""
    try:
        return opts.load(data, split)
    except NoSplitsError:
        logger.warning("%s has no splits: all of it trains, and validation is a held-out part of it", data)
        return opts.load(data, None)


def load_val(data: str | Path, opts: DatasetLoader, split: str | None = None) -> ImageDataset | None:
    """The validation split: ``split`` when given (an error when missing); else the data's ``val`` split when it
    has one. None means validation is to be held out of the training data (also for ``split="holdout"``)."""
    if split == HOLDOUT:
        return None
    if split is not None:
        return opts.load(data, split)
    try:
        return opts.load(data, "val")
    except MedvlkitError:
        return None


def group_ids(items: list[str], pattern: str | None = None,
              known: list[str | None] | None = None) -> list[str]:
    """One group (patient) id per item: the first match of ``pattern`` on the file name (its first capture group
    when it has one; the item itself when nothing matches), else ``known`` (the dataset's groups; an item whose group
    is None is a group of its own), else the item.

    Raises:
        MedvlkitError: ``pattern`` is not a valid regular expression.
    """
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise MedvlkitError(f"--group-pattern {pattern!r} is not a valid regular expression: {err}") from None
        return [(m.group(1) if m.groups() else m.group(0)) if (m := rx.search(Path(it).name)) else it
                for it in items]
    if known is not None:
        if len(known) != len(items):
            raise ValueError(f"{len(known)} group ids for {len(items)} items")
        return [it if g is None else g for g, it in zip(known, items)]
    return list(items)


def dataset_groups(dataset: ImageDataset, items: list[str]) -> list[str | None] | None:
    """The dataset's group ids of ``items`` (a subset of its items, e.g. those that could be read), or None."""
    if dataset.groups is None:
        return None
    of = dict(zip(dataset.items, dataset.groups))
    return [of[it] for it in items]


def holdout_indices(items: list[str], labels: np.ndarray, fraction: float, seed: int = 0,
                    group_pattern: str | None = None,
                    groups: list[str | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (train, val) with ``fraction`` of the groups held out, stratified by label where
    possible (each label's groups are sampled apart). Groups: see :func:`group_ids`."""
    if not 0 < fraction < 1:
        raise MedvlkitError(f"--val-fraction {fraction}: must be between 0 and 1")
    ids = group_ids(items, group_pattern, groups)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    key = np.nanargmax(np.nan_to_num(labels, nan=0), axis=1)  # stratify by (first) label
    index: dict[str, list[int]] = {}
    for i, g in enumerate(ids):
        index.setdefault(g, []).append(i)
    for k in np.unique(key):
        members = sorted({ids[i] for i in np.flatnonzero(key == k)})
        take = rng.permutation(len(members))[: max(1, round(fraction * len(members)))]
        for j in take:
            val += index[members[j]]
    val_set = set(val)
    train = np.array([i for i in range(len(items)) if i not in val_set])
    return train, np.array(sorted(val_set))


def check_scored_apart(scored: list[str], fitted: dict[str, list[str]]) -> None:
    """Refuse to score a model on images that trained or tuned it: ``fitted`` maps what each set of items did ("trained
    the probe", "chose its C"...) to those items.

    Raises:
        MedvlkitError: naming how many scored images did what, and one of them.
    """
    scored_set = set(scored)
    for role, items in fitted.items():
        shared = scored_set.intersection(items)
        if shared:
            raise MedvlkitError(f"{len(shared)} of the {len(scored_set)} images to be scored also {role} (e.g. "
                                f"{sorted(shared)[0]}): a score there measures memory, not skill. Score on a split "
                                "that neither trained nor tuned it (e.g. --split test / --test-split test)")


def few_shot_indices(labels: np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
    """K examples per class (seeded): single-label rows of that class, or multi-label rows positive for it."""
    if shots is None or shots < 1:
        raise MedvlkitError(f"--shots {shots}: must be at least 1")
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for c in range(labels.shape[1]):
        pool = np.flatnonzero(labels[:, c] == 1)
        if len(pool) < shots:
            raise MedvlkitError(f"--shots {shots}: class {c} has only {len(pool)} training examples")
        chosen.update(rng.choice(pool, shots, replace=False).tolist())
    return np.array(sorted(chosen))
