"""OpenCLIP models behind the medvlkit surface.

``open_clip:DIR`` (a folder laid out as an open_clip hub repo: ``open_clip_config.json`` +
``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``) is read by medvlkit's own modules where the
architecture is one it knows:

- open_clip's own towers (ViT image tower + causal text transformer, OpenAI's key layout): converted onto a
  transformers ``CLIPModel``, with exact GELU unless the config says ``quick_gelu`` (open_clip's default differs
  from OpenAI's weights), heads from ``head_width`` / ``heads``;
- a Hugging Face BERT text tower on a timm ViT (BiomedCLIP) or on open_clip's own ViT (QuiltNet-B-16-PMB):
  :mod:`medvlkit.models.hf_text_clip`.

Both work, and fine-tune, without open_clip, timm or torchvision. Other configs (ConvNeXt, CoCa, attentional
pooling...) and ``open_clip:<arch>@<tag>`` need the optional ``open_clip_torch`` package.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import ModelBase, PreprocessCfg, TextBatch, l2_normalize
from medvlkit.models.hub import HubRef, fetch
from medvlkit.models.open_clip_folder import (  # noqa: F401 (the folder format, read by biomedclip too)
    OPEN_CLIP_RESIZE_MODES,
    WEIGHT_NAMES,
    preprocess_from_config,
    read_open_clip_config,
    vision_fields,
    weights_file,
)

logger = logging.getLogger(__name__)
# vision_cfg / text_cfg keys whose default values are what OpenAI's layout computes; anything else is refused
_KNOWN_VISION = {"image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio"}
_KNOWN_TEXT = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_DEFAULTS_OK = {"pool_type": ("tok", "argmax"), "no_ln_pre": (False,), "final_ln_after_pool": (False,),
                "attentional_pool": (False,), "ls_init_value": (None,), "proj_bias": (False,), "embed_cls": (False,),
                "output_tokens": (False,), "patch_dropout": (0, 0.0), "pad_id": (0,), "no_causal_mask": (False,)}


class OpenCLIPDualEncoder(ModelBase):
    """An ``open_clip`` model (built by the open_clip package), its tokenizer, and its config's preprocessing."""

    def __init__(self, model, tokenizer, preprocess_cfg: PreprocessCfg, name: str,
                 weight_files: list[str] | None = None) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        with torch.no_grad():
            self.embed_dim = int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])

    default_lora_targets = ("out_proj", "c_fc", "c_proj", "qkv", "query", "value")

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def log_scale_param(self) -> torch.nn.Parameter:
        return self.model.logit_scale

    def tower_modules(self) -> dict[str, list[torch.nn.Module]]:
        m = self.model
        if hasattr(m, "text"):  # CustomTextCLIP (HF text tower)
            return {"vision": [m.visual], "text": [m.text]}
        # CLIP keeps the text tower's positional embedding and projection as loose parameters
        loose = torch.nn.ParameterList([p for p in (m.positional_embedding, m.text_projection)
                                        if isinstance(p, torch.nn.Parameter)])
        return {"vision": [m.visual], "text": [m.transformer, m.token_embedding, m.ln_final, loose]}

    def tokenize(self, texts: list[str]) -> TextBatch:
        return {"input_ids": self.tokenizer(list(texts))}

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.model.encode_image(pixels.to(self.device, self.dtype))
        return l2_normalize(feats) if normalize else feats

    def text_word_embedding(self) -> torch.nn.Module | None:
        m = self.model
        if hasattr(m, "text"):  # CustomTextCLIP: a Hugging Face text tower
            get = getattr(getattr(m.text, "transformer", None), "get_input_embeddings", None)
            return get() if get is not None else None
        return m.token_embedding

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        feats = self.model.encode_text(tokens["input_ids"].to(self.device))
        return l2_normalize(feats) if normalize else feats


def _unsupported(model_cfg: dict) -> list[str]:
    """Config entries the OpenAI-layout conversion cannot honour (names with their values)."""
    bad = [f"{k}={v}" for k, v in model_cfg.items()
           if k not in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text")
           and not (k in _DEFAULTS_OK and v in _DEFAULTS_OK[k])]
    for part, known in (("vision_cfg", _KNOWN_VISION), ("text_cfg", _KNOWN_TEXT)):
        bad += [f"{part}.{k}={v}" for k, v in model_cfg[part].items()
                if k not in known and not (k in _DEFAULTS_OK and v in _DEFAULTS_OK[k])]
    return bad


def load_open_clip_folder(folder: Path, device: str, dtype: torch.dtype, tokenizer: str | None = None) -> ModelBase:
    """An open_clip hub-layout folder through medvlkit's own modules (see the module docstring)."""
    from medvlkit.models.weight_files import read_weights

    cfg = read_open_clip_config(folder, "open_clip")
    model_cfg = cfg["model_cfg"]
    vision_cfg, text_cfg = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    if text_cfg.get("hf_model_name"):  # a Hugging Face text tower (BiomedCLIP, QuiltNet...): its own module
        from medvlkit.models.hf_text_clip import load_hf_text_clip

        if not vision_cfg.get("timm_model_name"):
            vision_only = {**model_cfg, "text_cfg": {}}
            bad = [b for b in _unsupported(vision_only) if not b.startswith("text_cfg.")]
            if bad:
                raise MedvlkitError(f"open_clip:{folder}: medvlkit reads open_clip's standard ViT; this config sets "
                                    f"{', '.join(bad[:4])}. Install the open_clip package (pip install "
                                    "'medvlkit[open_clip]') for it")
        return load_hf_text_clip(folder, "open_clip:", device, dtype)
    if vision_cfg.get("timm_model_name"):
        raise MedvlkitError(f"open_clip:{folder}: a {vision_cfg.get('timm_model_name')} image tower with open_clip's "
                            "text tower needs the open_clip package: pip install 'medvlkit[open_clip]'")
    bad = _unsupported(model_cfg)
    if bad:
        raise MedvlkitError(f"open_clip:{folder}: medvlkit reads open_clip's standard ViT CLIP; this config sets "
                            f"{', '.join(bad[:4])}. Install the open_clip package (pip install 'medvlkit[open_clip]') "
                            "for it")
    path = weights_file(folder, "open_clip")
    sd = read_weights(path, "is it an open_clip checkpoint?")
    pre = preprocess_from_config(cfg, vision_cfg.get("image_size", 224))
    return open_clip_vit(sd, model_cfg, pre, path, f"open_clip:{folder}", tokenizer, device, dtype)


def open_clip_vit(sd: dict[str, torch.Tensor], model_cfg: dict, pre: PreprocessCfg, path: Path, name: str,
                  tokenizer: str | None, device: str, dtype: torch.dtype) -> ModelBase:
    """open_clip's standard ViT CLIP from its state dict (OpenAI's key layout) and ``model_cfg`` (the activation, the
    text heads and MLP ratio, the vision head width: what the weights do not say), as transformers' ``CLIPModel``.

    Raises:
        MedvlkitError: the weights do not match the config.
    """
    from transformers import CLIPModel

    from medvlkit.models.hf import HFDualEncoder
    from medvlkit.models.openai_ckpt import find_tokenizer, infer_clip_config, openai_to_hf_state_dict

    text_cfg = model_cfg["text_cfg"]
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    try:
        config = infer_clip_config(sd)
        v_width, t_width = config.vision_config.hidden_size, config.text_config.hidden_size
        for name, value in vision_fields(model_cfg, v_width).items():
            setattr(config.vision_config, name, value)
        config.text_config.hidden_act = act
        config.text_config.num_attention_heads = int(text_cfg.get("heads", 8))
        config.text_config.intermediate_size = int(t_width * float(text_cfg.get("mlp_ratio", 4.0)))
        model = CLIPModel(config)
        missing, unexpected = model.load_state_dict(openai_to_hf_state_dict(sd), strict=False)
    except (KeyError, IndexError, ValueError, RuntimeError, MedvlkitError) as err:
        raise MedvlkitError(f"{name}: {path.name} is not an open_clip ViT CLIP checkpoint "
                            f"({first_line(err)})") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise MedvlkitError(f"{name}: {path.name} does not match its config: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
    logger.info("%s read natively: ViT width %d, %s", name, v_width, act)
    tok = find_tokenizer(path, tokenizer, config.text_config.vocab_size)
    moved = cast(Any, model).to(device=device, dtype=dtype)
    return HFDualEncoder(moved, tok, pre, name=name, weight_files=[str(path)])


def _weight_files(open_clip, arch: str, pretrained: str) -> list[str]:
    """The local files behind an open_clip model, so their size and mtime enter the embedding-cache fingerprint
    (a changed or re-downloaded checkpoint is re-embedded): a checkpoint path, the cached file of a pretrained tag,
    or the cached weights of an ``hf-hub:`` repository."""
    if pretrained and Path(pretrained).expanduser().is_file():
        return [str(Path(pretrained).expanduser().resolve())]
    found: list[str] = []
    try:
        if arch.startswith("hf-hub:"):
            from huggingface_hub import try_to_load_from_cache

            for name in WEIGHT_NAMES:
                hit = try_to_load_from_cache(arch[len("hf-hub:"):], name)
                if isinstance(hit, str):
                    found.append(hit)
        elif pretrained:
            pcfg = open_clip.get_pretrained_cfg(arch, pretrained)
            hit = open_clip.download_pretrained(pcfg) if pcfg else ""  # already downloaded: returns the cached path
            found += [hit] if hit and Path(hit).is_file() else []
    except Exception as err:  # noqa: BLE001 - open_clip's and the hub's APIs vary between versions
        logger.warning("open_clip:%s: could not locate its weight files for the cache fingerprint (%s); cached "
                       "embeddings are keyed by the name only", arch, first_line(err))
    return found


def load_open_clip(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   tokenizer: str | None = None) -> ModelBase:
    """``open_clip:DIR`` (hub-layout folder, read natively where possible), ``open_clip:<arch>[@<tag or file>]`` or
    ``open_clip:hf-hub:<id>`` (the open_clip package)."""
    folder = Path(ref).expanduser()
    if folder.is_dir() and (folder / "open_clip_config.json").is_file():
        return load_open_clip_folder(folder, device, dtype, tokenizer)
    hub = HubRef.parse(ref[len("hf-hub:"):]) if ref.startswith("hf-hub:") else None
    if hub is not None:  # the repository is fetched, then read natively when its layout allows
        snap = fetch(hub, "open_clip:hf-hub:")
        if (snap.path / "open_clip_config.json").is_file():
            model = load_open_clip_folder(snap.path, device, dtype, tokenizer)
            model.hub_source = snap.record()
            return model
    try:
        import open_clip  # lazy: optional extra, needs torchvision
    except ImportError as err:
        raise MedvlkitError(f"open_clip:{ref} needs the optional extra: pip install 'medvlkit[open_clip]' "
                            f"(open_clip_torch and torchvision; import failed: {err}). A local folder with "
                            "open_clip_config.json is read without it") from None
    arch, _, pretrained = ref.partition("@")
    try:
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None, device=device)
        tok = open_clip.get_tokenizer(arch)
    except Exception as err:  # noqa: BLE001
        raise MedvlkitError(f"open_clip could not create '{ref}': {first_line(err)}") from None
    cfg = preprocess_from_config({"preprocess_cfg": getattr(model.visual, "preprocess_cfg", {}) or {}}, 224)
    files = _weight_files(open_clip, arch, pretrained)
    return OpenCLIPDualEncoder(model.to(dtype=dtype), tok, cfg, name=f"open_clip:{ref}", weight_files=files)
