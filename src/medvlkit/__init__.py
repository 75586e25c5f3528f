"""medvlkit: medical vision-language models behind one API and one CLI.

The public names below are imported on first use (PEP 562), so ``import medvlkit`` and ``medvlkit --help`` do not
pay for torch, transformers and scipy until a command needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from medvlkit._version import __version__ as __version__
from medvlkit.errors import ImageReadError, MedvlkitError

_LAZY = {
    "ImageDataset": "medvlkit.data", "list_adapters": "medvlkit.data", "load_dataset": "medvlkit.data",
    "read_image": "medvlkit.data", "evaluate_probs": "medvlkit.evaluate", "embed_images": "medvlkit.features",
    "embed_texts": "medvlkit.features", "create_model": "medvlkit.models", "list_models": "medvlkit.models",
    "PromptSet": "medvlkit.prompts", "list_prompt_sets": "medvlkit.prompts", "load_prompt_set": "medvlkit.prompts",
    "prompt_set_from_classes": "medvlkit.prompts", "zeroshot_classify": "medvlkit.zeroshot",
    "RunOptions": "medvlkit.options", "DataOptions": "medvlkit.options", "audit": "medvlkit.dataaudit",
}
__all__ = ["DataOptions", "ImageDataset", "ImageReadError", "MedvlkitError", "PromptSet", "RunOptions", "audit",
           "create_model", "embed_images",
           "embed_texts", "evaluate_probs", "list_adapters", "list_models", "list_prompt_sets", "load_dataset",
           "load_prompt_set", "prompt_set_from_classes", "read_image", "zeroshot_classify"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from medvlkit.data import ImageDataset, list_adapters, load_dataset, read_image
    from medvlkit.dataaudit import audit
    from medvlkit.evaluate import evaluate_probs
    from medvlkit.features import embed_images, embed_texts
    from medvlkit.models import create_model, list_models
    from medvlkit.options import DataOptions, RunOptions
    from medvlkit.prompts import PromptSet, list_prompt_sets, load_prompt_set, prompt_set_from_classes
    from medvlkit.zeroshot import zeroshot_classify


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medvlkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])
