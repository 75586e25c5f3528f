"""One explicit step that aligns a dataset's label columns with the classes a model, probe, head or calibration
was fitted on: by class name, case-insensitively, through the shipped prompt sets' aliases ("PNEUMONIA",
"Pneumonia", "pneumonia" are one class). Columns are reordered, extra data classes dropped, missing classes
filled (0 for single-label data, whose truth is known to be another class; NaN for multi-label data). The mapping
is logged and recorded; nothing aligning is an error, never a silent score.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from medvlkit.errors import MedvlkitError

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _alias_index() -> dict[str, str]:
    """Alias -> class, from the shipped prompt sets, keeping only aliases that name one class in every set (e.g.
    "normal" is a breast-ultrasound class in one set and a chest X-ray class in another: it stays "normal")."""
    from medvlkit.data.prompts import _norm, list_prompt_sets, load_prompt_set

    targets: dict[str, set[str]] = {}
    for name in list_prompt_sets():
        for c in load_prompt_set(name).classes:
            for alias in [c.name, *c.aliases]:
                targets.setdefault(_norm(alias), set()).add(_norm(c.name))
    return {alias: next(iter(t)) for alias, t in targets.items() if len(t) == 1}


def canonical_class(name: str) -> str:
    """The comparison key of a class name: lower case, spaces/underscores/hyphens folded, aliases resolved."""
    from medvlkit.data.prompts import _norm

    key = _norm(str(name))
    return _alias_index().get(key, key)


@dataclass
class Alignment:
    """Labels put in a target class order.

    Attributes:
        labels: (N_kept, T) labels in the target order.
        keep: (N,) which data rows remain (single-label rows of a class the target lacks are dropped).
        mapping: target class -> the data class it was matched to (None: not in the data).
        dropped_classes: data classes with no target class.
    """

    labels: np.ndarray
    keep: np.ndarray
    mapping: dict[str, str | None]
    dropped_classes: list[str]

    @property
    def identity(self) -> bool:
        return not self.dropped_classes and all(k == v for k, v in self.mapping.items()) and bool(self.keep.all())

    def record(self) -> dict:
        """What ``result.json`` stores about the alignment."""
        return {"mapping": self.mapping, "dropped_classes": self.dropped_classes,
                "n_rows_dropped": int((~self.keep).sum())}


def align_labels(labels: np.ndarray, data_classes: list[str], target_classes: list[str],
                 multilabel: bool) -> Alignment:
    """Put (N, C_data) labels into ``target_classes`` order.

    Raises:
        MedvlkitError: no class matches, two classes of one side share a name, or no row is left.
    """
    data_keys = _keys(data_classes, "data")
    target_keys = _keys(target_classes, "fitted")
    column = {k: i for i, k in enumerate(data_keys)}
    mapping = {t: (data_classes[column[k]] if k in column else None) for t, k in zip(target_classes, target_keys)}
    if all(v is None for v in mapping.values()):
        raise MedvlkitError(f"no class of the data {list(data_classes)} matches the classes it is scored against "
                            f"{list(target_classes)}; scoring would compare unrelated labels")
    dropped = [c for c, k in zip(data_classes, data_keys) if k not in set(target_keys)]
    labels = np.asarray(labels, dtype=np.float32)
    fill = np.nan if multilabel else 0.0
    out = np.stack([labels[:, column[k]] if k in column else np.full(len(labels), fill, np.float32)
                    for k in target_keys], axis=1)
    keep = np.ones(len(labels), dtype=bool)
    if not multilabel:
        keep = np.nansum(out, axis=1) == 1  # a row whose class the target lacks has no true class to score
        if not keep.any():
            raise MedvlkitError(f"no image of the data belongs to a class of {list(target_classes)}")
    result = Alignment(out[keep], keep, mapping, dropped)
    if not result.identity:
        logger.warning("label alignment (fitted class <- data class): %s; data classes dropped: %s; rows dropped: %d",
                       ", ".join(f"{t} <- {d}" for t, d in mapping.items()), dropped or "none", (~keep).sum())
    return result


def _keys(classes: list[str], side: str) -> list[str]:
    keys = [canonical_class(c) for c in classes]
    seen: dict[str, str] = {}
    for c, k in zip(classes, keys):
        if k in seen:
            raise MedvlkitError(f"{side} classes '{seen[k]}' and '{c}' are the same class by name or alias")
        seen[k] = c
    return keys
