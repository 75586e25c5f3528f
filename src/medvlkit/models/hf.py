"""transformers CLIPModel / SiglipModel behind the medvlkit model surface (`hf:<dir or hub id>`)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from medvlkit.errors import MedvlkitError, loading_weights
from medvlkit.models.base import ModelBase, PreprocessCfg, TextBatch, TokenizerRecipe, l2_normalize
from medvlkit.models.hub import HubRef, Snapshot, resolve_folder
from medvlkit.models.image_only import IMAGE_ONLY_TYPES, ImageOnlyEncoder

logger = logging.getLogger(__name__)

_PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_SUPPORTED_TYPES = ("clip", "siglip")


class HFDualEncoder(ModelBase):
    """A transformers CLIPModel or SiglipModel with its tokenizer and preprocessing.

    Args:
        model: a ``CLIPModel`` or ``SiglipModel``.
        tokenizer: the tokenizer saved with the weights.
        preprocess_cfg: image preprocessing read from the weights' ``preprocessor_config.json``.
        name: the spec the model was created from.
        weight_files: files whose size and mtime identify these weights (for the embedding cache).
    """

    def __init__(self, model, tokenizer, preprocess_cfg: PreprocessCfg, name: str,
                 weight_files: list[str] | None = None) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.model_type = model.config.model_type
        self.embed_dim = _projection_dim(model.config)
        self.context_length = int(model.config.text_config.max_position_embeddings)

    @property
    def logit_scale(self) -> float:
        """The model's own learned temperature (exp of the stored log scale)."""
        return float(self.model.logit_scale.detach().exp())

    default_lora_targets = ("q_proj", "v_proj", "fc1", "fc2")  # attention and MLP of both transformers

    def tower_modules(self) -> dict[str, list[torch.nn.Module]]:
        m = self.model
        extra = lambda name: [getattr(m, name)] if getattr(m, name, None) is not None else []  # noqa: E731
        return {"vision": [m.vision_model, *extra("visual_projection")],
                "text": [m.text_model, *extra("text_projection")]}

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision transformer's pooled output (CLIP: the normalised class token; SigLIP: the attention pool)."""
        return self.model.vision_model(pixel_values=pixels.to(self.device, self.dtype)).pooler_output

    def log_scale_param(self) -> torch.nn.Parameter:
        return self.model.logit_scale  # CLIPModel and SiglipModel both store the log of the scale

    def log_bias_param(self) -> torch.nn.Parameter | None:
        return getattr(self.model, "logit_bias", None) if self.model_type == "siglip" else None

    def token_recipe(self) -> TokenizerRecipe:
        # SigLIP was trained on texts padded to the full length and pools the last token.
        if self.model_type == "siglip":
            return TokenizerRecipe(self.context_length, "max_length", ("input_ids",))
        return TokenizerRecipe(self.context_length)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
        return l2_normalize(feats) if normalize else feats

    def text_word_embedding(self) -> torch.nn.Module | None:
        text = getattr(self.model, "text_model", None)  # CLIP, SigLIP
        return text.embeddings.token_embedding if text is not None else None

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        feats = _pooled(self.model.get_text_features(**tokens))
        return l2_normalize(feats) if normalize else feats


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; 4.x returned the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _projection_dim(config) -> int:
    if getattr(config, "projection_dim", None):
        return int(config.projection_dim)
    return int(config.vision_config.hidden_size)  # SigLIP: no projection, the pooled width is the space


def preprocess_cfg_from_dir(path: Path, model_type: str, image_size: int) -> PreprocessCfg:
    """Read ``preprocessor_config.json`` (as saved by CLIPImageProcessor / SiglipImageProcessor)."""
    defaults = _default_cfg(model_type, image_size)
    cfg_file = path / "preprocessor_config.json"
    if not cfg_file.is_file():
        logger.warning("%s has no preprocessor_config.json; using %s defaults", path, model_type)
        return defaults
    raw = json.loads(cfg_file.read_text())
    size = raw.get("size") or {}
    crop = raw.get("crop_size") or {}
    if raw.get("do_center_crop", False) and "shortest_edge" in size:
        side, mode = int(crop.get("height", size["shortest_edge"])), "shortest"
        if side != int(size["shortest_edge"]):
            logger.warning("crop %d != resize %d in %s; using crop size", side, size["shortest_edge"], cfg_file)
    else:
        side = int(size.get("height", size.get("shortest_edge", image_size)))
        mode = "squash" if "height" in size else "shortest"
    return PreprocessCfg(
        image_size=side,
        mean=tuple(raw.get("image_mean", defaults.mean)),
        std=tuple(raw.get("image_std", defaults.std)),
        interpolation=_PIL_RESAMPLE_NAMES.get(int(raw.get("resample", 3)), "bicubic"),
        resize_mode=mode,
    )


def _default_cfg(model_type: str, image_size: int) -> PreprocessCfg:
    if model_type == "siglip":
        return PreprocessCfg(image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", "squash")
    return PreprocessCfg(image_size=image_size)


def resolve_hf_path(ref: str) -> tuple[Path, Snapshot | None]:
    """A local directory as is; a hub id (``org/name[@revision]``) downloaded or found in the Hugging Face cache
    (:func:`medvlkit.models.hub.fetch`), with the snapshot that records its commit and files.

    Raises:
        MedvlkitError: a file, a path that does not exist, or a hub id that cannot be fetched (one line each).
    """
    path = Path(ref).expanduser()
    if path.exists() and not path.is_dir():
        raise MedvlkitError(f"hf:{ref} is a file; hf: takes a directory written by save_pretrained "
                            "(use openai-ckpt:FILE for an OpenAI-format .pt/.pth state dict)")
    if not path.is_dir() and HubRef.parse(ref) is None:  # a path, not an <org>/<name> hub id
        raise MedvlkitError(f"hf:{ref}: no such directory; pass a folder written by save_pretrained "
                            "(config.json, weights, tokenizer and preprocessor files) or a hub id org/name")
    return resolve_folder(ref, "hf:")


def _load_image_only(ref: str, path: Path, snap: Snapshot | None, config: Any, device: str,
                     dtype: torch.dtype) -> ModelBase:
    """An image-only transformers backbone (``Dinov2Model``) from its folder."""
    from transformers import Dinov2Model

    with loading_weights(f"hf:{ref}: the weights in {path}",
                         "the folder needs model.safetensors (or pytorch_model.bin) written by save_pretrained"):
        loaded: Any = Dinov2Model.from_pretrained(path, local_files_only=True, dtype=dtype)
    cfg = preprocess_cfg_from_dir(path, config.model_type, int(config.image_size))
    weights = sorted(str(p) for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    model = ImageOnlyEncoder(loaded.to(device), cfg, name=f"hf:{os.fspath(ref)}", weight_files=weights)
    model.hub_source = snap.record() if snap is not None else None
    return model


def load_hf(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ModelBase:
    """A CLIPModel or SiglipModel and its tokenizer, or an image-only Dinov2Model, from a directory or a hub id."""
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

    path, snap = resolve_hf_path(ref)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise MedvlkitError(f"hf:{ref}: no readable config.json in {path} ({err})") from None
    if config.model_type in IMAGE_ONLY_TYPES:
        return _load_image_only(ref, path, snap, config, device, dtype)
    if config.model_type not in _SUPPORTED_TYPES:
        raise MedvlkitError(f"hf:{ref} is a '{config.model_type}' model; hf: loads "
                            f"{', '.join(_SUPPORTED_TYPES + IMAGE_ONLY_TYPES)}. "
                            "For OpenCLIP models (BiomedCLIP) use open_clip:hf-hub:<id>")
    cls = SiglipModel if config.model_type == "siglip" else CLIPModel
    with loading_weights(f"hf:{ref}: the weights in {path}",
                         "the folder needs model.safetensors (or pytorch_model.bin) written by save_pretrained"):
        loaded: Any = cls.from_pretrained(path, local_files_only=True, dtype=dtype)
        model = loaded.to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise MedvlkitError(f"hf:{ref}: no tokenizer files in {path} ({err}); save the tokenizer next to "
                            "the weights with tokenizer.save_pretrained(DIR)") from None
    cfg = preprocess_cfg_from_dir(path, config.model_type, int(config.vision_config.image_size))
    weights = sorted(str(p) for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    encoder = HFDualEncoder(model, tokenizer, cfg, name=f"hf:{os.fspath(ref)}", weight_files=weights)
    encoder.hub_source = snap.record() if snap is not None else None
    return encoder
