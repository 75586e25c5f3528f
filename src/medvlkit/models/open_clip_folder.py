"""The open_clip hub folder format (``open_clip_config.json`` + ``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin``): reading its config, finding its weights, and its preprocessing, shared by
:mod:`medvlkit.models.open_clip` and :mod:`medvlkit.models.biomedclip`."""

from __future__ import annotations

import json
from pathlib import Path

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import PreprocessCfg

WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_RESIZE_MODES = ("shortest", "longest", "squash")  # open_clip's image_transform, each done exactly here


def preprocess_from_config(cfg: dict, image_size) -> PreprocessCfg:
    """An open_clip config's ``preprocess_cfg`` (size, mean, std, interpolation, resize_mode, fill_color) as a
    PreprocessCfg, exactly as open_clip's inference transform applies it.

    Raises:
        MedvlkitError: a resize mode, fill colour or interpolation that medvlkit does not implement exactly (refused
            rather than approximated: an approximation would change every embedding a little).
    """
    pre = cfg.get("preprocess_cfg", {}) or {}
    size = pre.get("size", image_size)
    mode = pre.get("resize_mode") or "shortest"
    if mode not in OPEN_CLIP_RESIZE_MODES:
        raise MedvlkitError(f"open_clip preprocess_cfg resize_mode '{mode}' is not implemented (valid: "
                            f"{', '.join(OPEN_CLIP_RESIZE_MODES)}); refused rather than approximated")
    if pre.get("fill_color", 0) not in (0, None):
        raise MedvlkitError(f"open_clip preprocess_cfg fill_color {pre['fill_color']!r}: only 0 (black padding) is "
                            "implemented; refused rather than approximated")
    interpolation = pre.get("interpolation") or "bicubic"
    if interpolation not in ("bicubic", "bilinear", "random"):
        raise MedvlkitError(f"open_clip preprocess_cfg interpolation '{interpolation}' is not one open_clip knows "
                            "(bicubic, bilinear, random)")
    size = size[0] if isinstance(size, (list, tuple)) else size
    if isinstance(pre.get("size"), (list, tuple)) and len(set(pre["size"])) > 1:
        raise MedvlkitError(f"open_clip preprocess_cfg size {pre['size']}: non-square inputs are not implemented")
    return PreprocessCfg(image_size=int(size), mean=tuple(pre.get("mean", PreprocessCfg.mean)),
                         std=tuple(pre.get("std", PreprocessCfg.std)),
                         interpolation="bilinear" if interpolation == "bilinear" else "bicubic",  # random: bicubic
                         resize_mode=mode)


def vision_fields(model_cfg: dict, width: int) -> dict:
    """open_clip's own ViT options as ``CLIPVisionConfig`` fields: the activation (exact GELU unless ``quick_gelu``:
    open_clip's default differs from OpenAI's weights), the heads (``head_width``) and the MLP width (``mlp_ratio``)."""
    vision_cfg = model_cfg["vision_cfg"]
    return {"hidden_act": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
            "num_attention_heads": width // int(vision_cfg.get("head_width", 64)),
            "intermediate_size": int(width * float(vision_cfg.get("mlp_ratio", 4.0)))}


def read_open_clip_config(folder: Path, spec: str) -> dict:
    """``open_clip_config.json`` of a hub-layout folder, with a one-line error when it is missing or malformed."""
    try:
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        cfg["model_cfg"]["vision_cfg"], cfg["model_cfg"]["text_cfg"]  # noqa: B018 - both must exist
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise MedvlkitError(f"{spec}:{folder}: no readable open_clip_config.json with model_cfg.vision_cfg and "
                            f"text_cfg ({first_line(err)})") from None
    return cfg


def weights_file(folder: Path, spec: str) -> Path:
    """The hub folder's checkpoint (safetensors preferred)."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise MedvlkitError(f"{spec}:{folder}: no {' or '.join(WEIGHT_NAMES)} there")
