"""Backbones behind one surface. The built-in sources (lite, hf, openai-ckpt, open_clip, ft) are registered in
:mod:`medvlkit.models.registry` by module path and imported on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medvlkit.models.presets import PRESETS, ModelPreset
from medvlkit.models.registry import create_model, list_models, register_source

_LAZY = {"ImagePreprocessor": "medvlkit.models.base", "ModelBase": "medvlkit.models.base",
         "PreprocessCfg": "medvlkit.models.base", "VisionLanguageModel": "medvlkit.models.base"}

if TYPE_CHECKING:
    from medvlkit.models.base import ImagePreprocessor, ModelBase, PreprocessCfg, VisionLanguageModel


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medvlkit.models' has no attribute {name!r}")


__all__ = ["ImagePreprocessor", "ModelBase", "ModelPreset", "PRESETS", "PreprocessCfg", "VisionLanguageModel",
           "create_model", "list_models", "register_source"]
