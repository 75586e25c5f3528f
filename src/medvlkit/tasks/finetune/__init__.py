"""Adapting a model to a user's data: contrastive (full / LoRA / frozen tower, GradCache) and supervised
fine-tuning (``loop.finetune``, a job of the one training loop in ``medvlkit/engine/training.py``), on one process or
under ``torchrun``."""

from medvlkit.tasks.finetune.config import FinetuneConfig
from medvlkit.tasks.finetune.loop import finetune
from medvlkit.tasks.finetune.lora import LoraSpec, merge_lora

__all__ = ["FinetuneConfig", "LoraSpec", "finetune", "merge_lora"]
