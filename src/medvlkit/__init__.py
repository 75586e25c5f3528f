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
    "operating_points": "medvlkit.engine.operating_points", "net_benefit": "medvlkit.engine.operating_points",
    "subgroup_metrics": "medvlkit.engine.subgroups", "fit_conformal": "medvlkit.engine.conformal",
    "prediction_sets": "medvlkit.engine.conformal", "coverage_report": "medvlkit.engine.conformal",
    "zeroshot_prompt_sensitivity": "medvlkit.tasks.zeroshot",
}
__all__ = ["DataOptions", "ImageDataset", "ImageReadError", "MedvlkitError", "PromptSet", "RunOptions", "audit",
           "coverage_report", "create_model", "embed_images",
           "embed_texts", "evaluate_probs", "fit_conformal", "list_adapters", "list_models", "list_prompt_sets",
           "load_dataset", "load_prompt_set", "net_benefit", "operating_points", "prediction_sets",
           "prompt_set_from_classes", "read_image", "subgroup_metrics", "zeroshot_classify",
           "zeroshot_prompt_sensitivity"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from medvlkit.data import ImageDataset, list_adapters, load_dataset, read_image
    from medvlkit.data.prompts import PromptSet, list_prompt_sets, load_prompt_set, prompt_set_from_classes
    from medvlkit.engine.conformal import coverage_report, fit_conformal, prediction_sets
    from medvlkit.engine.features import embed_images, embed_texts
    from medvlkit.engine.operating_points import net_benefit, operating_points
    from medvlkit.engine.options import DataOptions, RunOptions
    from medvlkit.engine.subgroups import subgroup_metrics
    from medvlkit.models import create_model, list_models
    from medvlkit.tasks.dataaudit import audit
    from medvlkit.tasks.evaluate import evaluate_probs
    from medvlkit.tasks.zeroshot import zeroshot_classify, zeroshot_prompt_sensitivity


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medvlkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])
