"""medvlkit: medical vision-language models behind one API and one CLI.

The public names below are imported on first use (PEP 562), so ``import medvlkit`` and ``medvlkit --help`` do not
pay for torch, transformers and scipy until a command needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medvlkit._version import __version__ as __version__
from medvlkit.errors import ImageReadError, MedvlkitError

_LAZY = {
    "ImageDataset": "medvlkit.data", "list_adapters": "medvlkit.data", "load_dataset": "medvlkit.data",
    "read_image": "medvlkit.data", "create_model": "medvlkit.models", "list_models": "medvlkit.models",
    "PromptSet": "medvlkit.data.prompts", "list_prompt_sets": "medvlkit.data.prompts",
    "load_prompt_set": "medvlkit.data.prompts", "prompt_set_from_classes": "medvlkit.data.prompts",
    "embed_images": "medvlkit.engine.features", "embed_texts": "medvlkit.engine.features",
    "RunOptions": "medvlkit.engine.options", "DataOptions": "medvlkit.engine.options",
    "zeroshot_classify": "medvlkit.tasks.zeroshot", "evaluate_probs": "medvlkit.tasks.evaluate",
    "audit": "medvlkit.tasks.dataaudit",
}
__all__ = ["DataOptions", "ImageDataset", "ImageReadError", "MedvlkitError", "PromptSet", "RunOptions", "audit",
           "create_model", "embed_images",
           "embed_texts", "evaluate_probs", "list_adapters", "list_models", "list_prompt_sets", "load_dataset",
           "load_prompt_set", "prompt_set_from_classes", "read_image", "zeroshot_classify"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from medvlkit.data import ImageDataset, list_adapters, load_dataset, read_image
    from medvlkit.data.prompts import PromptSet, list_prompt_sets, load_prompt_set, prompt_set_from_classes
    from medvlkit.engine.features import embed_images, embed_texts
    from medvlkit.engine.options import DataOptions, RunOptions
    from medvlkit.models import create_model, list_models
    from medvlkit.tasks.dataaudit import audit
    from medvlkit.tasks.evaluate import evaluate_probs
    from medvlkit.tasks.zeroshot import zeroshot_classify


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medvlkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])
