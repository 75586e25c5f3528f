"""Backbones behind one surface. Importing this package registers the built-in sources."""

from medvlkit.models.base import ImagePreprocessor, ModelBase, PreprocessCfg, VisionLanguageModel
from medvlkit.models.hf import load_hf
from medvlkit.models.lite import load_lite
from medvlkit.models.open_clip import load_open_clip
from medvlkit.models.openai_ckpt import load_openai_ckpt
from medvlkit.models.presets import PRESETS, ModelPreset
from medvlkit.models.registry import create_model, list_models, register_source

register_source("lite")(load_lite)
register_source("hf")(load_hf)
register_source("openai-ckpt")(load_openai_ckpt)
register_source("open_clip")(load_open_clip)


def _load_ft(ref: str, **kwargs):
    from medvlkit.finetune.saved import load_finetuned  # the finetune package imports models: load it lazily

    return load_finetuned(ref, **kwargs)


register_source("ft")(_load_ft)

__all__ = ["ImagePreprocessor", "ModelBase", "ModelPreset", "PRESETS", "PreprocessCfg", "VisionLanguageModel",
           "create_model", "list_models", "register_source"]
