"""Reading a weights file without running code from it: the one reader behind openai-ckpt:, biomedclip: and biovil:."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medvlkit.errors import MedvlkitError, loading_weights
from medvlkit.models.torchscript import check_tensors_own_storage, is_torchscript_archive, read_torchscript_tensors


def _numpy_scalars() -> list:
    """What a training checkpoint's numpy numbers (a best score, a step count) are pickled with: numpy's scalar
    constructor (under numpy 1's and numpy 2's module names), ``numpy.dtype`` with its boolean, integer and float
    classes, and ``_codecs.encode`` (the scalar's raw bytes). Data constructors only (no object, string or void
    dtype): allowed to ``weights_only`` loading, which refuses them by default."""
    import codecs

    import numpy as np

    scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
    numeric = [getattr(np.dtypes, n) for n in dir(np.dtypes)
               if n.endswith("DType") and n[:-5] in ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16",
                                                     "UInt32", "UInt64", "Float16", "Float32", "Float64", "Long",
                                                     "ULong", "LongLong", "ULongLong", "Short", "UShort", "Byte",
                                                     "UByte", "Int", "UInt")]
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            (codecs.encode, "_codecs.encode"), *numeric]


def read_weights(path: Path, expected: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, a TorchScript archive (read record by record, never executed) or a
    pickled state dict (``weights_only=True``, numpy numbers beside the tensors allowed, as training checkpoints
    (UniMed-CLIP's) carry them; a ``state_dict`` / ``model_state_dict`` / ``model`` wrapper is unwrapped). Entries that
    are not tensors are dropped.

    Args:
        expected: what the file should have been, for the error message.

    Raises:
        MedvlkitError: a damaged file, a refused pickle, or something that is not a state dict.
    """
    with loading_weights(f"'{path}'", expected):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        elif is_torchscript_archive(path):
            obj = read_torchscript_tensors(path)
        else:
            with torch.serialization.safe_globals(_numpy_scalars()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise MedvlkitError(f"'{path}' holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    check_tensors_own_storage(path, tensors)  # a pickled stride-0 view would become gigabytes when copied
    return tensors
