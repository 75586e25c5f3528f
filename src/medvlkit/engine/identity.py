"""What a result was computed from, as one comparable record.

Every task writes ``identity`` into its ``result.json``: the model (its fingerprint and the sha256 of its weight
files), each dataset it read (items, their sizes and modification times, labels, captions), the prompt texts,
the medvlkit version and the options that change numbers, with a ``sha256`` over all of it. Each task builds its
record with its own ``*_identity`` function, the one it writes with, so ``eval --skip-existing`` (and anyone
else) compares identities, never a hand-kept list of settings that drifts from what a task consumes.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.items import item_stamp


def dataset_identity(dataset: ImageDataset) -> str:
    """sha256 of a dataset as a task reads it: name and split, each item with its file's size and modification
    time, the class names, the label matrix, the captions and the multi-label flag."""
    h = hashlib.sha256()
    h.update(json.dumps([dataset.full_name, dataset.classnames, bool(dataset.multilabel)]).encode())
    for item in dataset.items:
        h.update(f"\x00{item}|{item_stamp(item)}".encode())
    if dataset.labels is not None:
        h.update(np.ascontiguousarray(dataset.labels, dtype=np.float32).tobytes())
    for text in dataset.texts or []:
        h.update(b"\x01" + text.encode())
    return h.hexdigest()


def model_identity(model) -> dict:
    """The model as results depend on it: name, fingerprint (preprocessing, weight dtype, weight files' paths, sizes
    and times), the weight files' sha256 (``pretrained``) and the engine computing its image tower."""
    return {"name": model.name, "fingerprint": model.fingerprint(), "weights": model.weights_identity(),
            "engine": model.engine}


def identity_record(task: str, **parts) -> dict:
    """``parts`` (JSON-ready) with the task, the medvlkit version, and ``sha256`` over everything."""
    from medvlkit._version import __version__

    record = {"task": task, "medvlkit": __version__, **parts}
    record["sha256"] = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
    return record


RESULT_OPTIONS = {"on_error": "fail", "fast_decode": False}
"""The embedding options that change numbers, with their defaults (the weights' dtype and the tokenizer are part of
the model's fingerprint; batch size, workers, cache and progress bars change only how fast)."""


def result_options(embed_options: dict) -> dict:
    """The options of ``embed_options`` (:meth:`RunOptions.embed_kwargs` form) that change a result's numbers."""
    return {k: embed_options.get(k, default) for k, default in RESULT_OPTIONS.items()}
