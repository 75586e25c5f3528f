"""Image-only backbones: a vision transformer without a text tower (RAD-DINO, DINOv2), read with transformers'
``Dinov2Model`` from a ``save_pretrained`` folder or a hub id (``hf:microsoft/rad-dino``).

The embedding is what the model cards use: ``pooler_output``, the class token after the final layer norm (RAD-DINO:
"a classifier trained on top of the CLS token"; "image retrieval, using nearest neighbors of the CLS token").
What needs no text works: embed, probe, index and search by image, audit, supervised fine-tuning (a classifier head,
LoRA or full). What needs text vectors (zero-shot, text retrieval and search, the zero-shot gate, contrastive
fine-tuning, export of a text tower) is refused in one line by :meth:`ModelBase.require_text`, before any work.
"""

from __future__ import annotations

from typing import Any

import torch

from medvlkit.models.base import ModelBase, PreprocessCfg, TextBatch, l2_normalize

IMAGE_ONLY_TYPES = ("dinov2",)


class ImageOnlyEncoder(ModelBase):
    """A transformers ``Dinov2Model`` as a medvlkit backbone with no text tower.

    Args:
        model: the ``Dinov2Model``.
        preprocess_cfg: image preprocessing read from the weights' ``preprocessor_config.json``.
        name: the spec the model was created from.
        weight_files: files whose size and mtime identify these weights (for the embedding cache).
    """

    has_text = False
    default_lora_targets = ("query", "value", "fc1", "fc2")  # Dinov2 attention projections and MLP

    def __init__(self, model: Any, preprocess_cfg: PreprocessCfg, name: str,
                 weight_files: list[str] | None = None) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.model = model.eval()
        self.name = name
        self.model_type = model.config.model_type
        self.embed_dim = int(model.config.hidden_size)
        self.context_length = 0

    @property
    def logit_scale(self) -> float:
        self.require_text("a temperature over image-text similarities")
        return 1.0

    def tower_modules(self) -> dict[str, list[torch.nn.Module]]:
        return {"vision": [self.model], "text": []}

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The class token after the final layer norm (there is no projection: the backbone is the space)."""
        return self.model(pixel_values=pixels.to(self.device, self.dtype)).pooler_output

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.image_backbone_features(pixels)
        return l2_normalize(feats) if normalize else feats

    def tokenize(self, texts: list[str]) -> TextBatch:
        self.require_text("tokenizing text")
        return {}

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        self.require_text("embedding text")
        return torch.empty(0)

    def log_scale_param(self) -> torch.nn.Parameter:
        self.require_text("contrastive fine-tuning (use --mode supervised)")
        raise AssertionError("unreachable")
