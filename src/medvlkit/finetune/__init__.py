"""Adapting a model to a user's data: contrastive (full / LoRA / frozen tower, GradCache) and supervised
fine-tuning in one loop (``loop.finetune``), on one process or under ``torchrun``."""

from medvlkit.finetune.config import FinetuneConfig
from medvlkit.finetune.loop import finetune
from medvlkit.finetune.lora import LoraSpec, merge_lora

__all__ = ["FinetuneConfig", "LoraSpec", "finetune", "merge_lora"]
