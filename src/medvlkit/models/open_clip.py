"""OpenCLIP models (BiomedCLIP...) behind the medvlkit surface. Optional: needs ``open_clip_torch``."""

from __future__ import annotations

import torch

from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase, PreprocessCfg, TextBatch, l2_normalize


class OpenCLIPDualEncoder(ModelBase):
    """An ``open_clip`` model, its tokenizer, and the preprocessing its config declares."""

    def __init__(self, model, tokenizer, preprocess_cfg: PreprocessCfg, name: str,
                 weight_files: list[str] | None = None) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        with torch.no_grad():
            self.embed_dim = int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def tokenize(self, texts: list[str]) -> TextBatch:
        return {"input_ids": self.tokenizer(list(texts))}

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.model.encode_image(pixels.to(self.device, self.dtype))
        return l2_normalize(feats) if normalize else feats

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        feats = self.model.encode_text(tokens["input_ids"].to(self.device))
        return l2_normalize(feats) if normalize else feats


def load_open_clip(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> OpenCLIPDualEncoder:
    """``open_clip:<arch>[@<pretrained tag or file>]`` or ``open_clip:hf-hub:<id>``."""
    try:
        import open_clip  # lazy: optional extra, needs torchvision
    except ImportError as err:
        raise MedvlkitError(f"open_clip:{ref} needs the optional extra: pip install 'medvlkit[open_clip]' "
                            f"(open_clip_torch and torchvision; import failed: {err})") from None
    arch, _, pretrained = ref.partition("@")
    try:
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None, device=device)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as err:  # noqa: BLE001
        raise MedvlkitError(f"open_clip could not create '{ref}': {err}") from None
    pc = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pc.get("size", 224)
    cfg = PreprocessCfg(image_size=size[0] if isinstance(size, (tuple, list)) else int(size),
                        mean=tuple(pc.get("mean", PreprocessCfg.mean)), std=tuple(pc.get("std", PreprocessCfg.std)),
                        interpolation=pc.get("interpolation", "bicubic"),
                        resize_mode="squash" if pc.get("resize_mode") == "squash" else "shortest")
    from pathlib import Path

    files = [str(Path(pretrained).expanduser().resolve())] if pretrained and Path(pretrained).expanduser().is_file() \
        else []  # a local checkpoint's size and mtime enter the cache fingerprint: a changed file is re-embedded
    return OpenCLIPDualEncoder(model.to(dtype=dtype), tokenizer, cfg, name=f"open_clip:{ref}", weight_files=files)
