"""Training checkpoints that can be loaded without running code.

A checkpoint holds tensors (weights, optimizer moments, RNG states) and plain data (ints, floats, strings, lists,
dicts). It is written with ``torch.save`` through a temporary file and a rename, and read back with
``torch.load(weights_only=True)``, whose unpickler rebuilds tensors and plain containers only: a run folder copied
from someone else cannot execute code through its ``checkpoint.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from medvlkit.errors import MedvlkitError, first_line


def _plain(obj):
    """Numpy scalars and arrays -> Python numbers and tensors, recursively (what ``weights_only`` accepts)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    return obj


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically: a crash mid-write leaves the previous checkpoint in place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(_plain(state), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; anything but tensors and plain data is refused.

    Raises:
        MedvlkitError: the file is damaged or holds other objects (it could run code when unpickled).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle and zip errors come in many types
        raise MedvlkitError(f"{path} refused: it is damaged or holds objects other than tensors and plain data "
                            f"(loading it could run code; {first_line(err)}). Delete it and start the run again "
                            "without --resume") from None
    if not isinstance(state, dict):
        raise MedvlkitError(f"{path} is not a medvlkit checkpoint (it holds a {type(state).__name__})")
    return state
