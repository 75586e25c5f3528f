"""OpenAI-format CLIP state dicts (CheXzero, original PubMedCLIP, OpenAI's own .pt files).

The architecture is inferred from tensor shapes, as OpenAI's ``clip.model.build_model`` does. ViT image towers map
onto a transformers ``CLIPModel``; ResNet towers (RN50, RN101, RN50x4...) become
:class:`~medvlkit.models.clip_resnet.ResNetCLIP` (OpenAI's ModifiedResNet in plain torch + transformers' CLIP text
model). Files are ``.pt``/``.pth`` (pickled state dicts, TorchScript archives) or ``.safetensors``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, cast

import torch

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import ModelBase, PreprocessCfg
from medvlkit.models.clip_bpe import VOCAB_SIZE, clip_tokenizer
from medvlkit.models.hf import HFDualEncoder
from medvlkit.models.preprocess import preprocess_beside
from medvlkit.models.weight_files import read_weights

logger = logging.getLogger(__name__)

# (openai suffix inside a residual block, HF suffix inside an encoder layer)
_BLOCK_MAP = [
    ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"),
]
_TOWERS = [("visual.transformer.resblocks", "vision_model.encoder.layers"),
           ("transformer.resblocks", "text_model.encoder.layers")]
_PLAIN_MAP = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# EyeCLIP's release keeps the MAE decoder its ViT was trained with (eyeclip/model.py, MAE_decoder); CLIP's embeddings
# never run it, and EyeCLIP itself drops it silently (load_state_dict(strict=False)). Here it is dropped by name only:
# any other tensor CLIP does not have is still refused.
_MAE_DECODER = re.compile(r"visual\.decoder\.(decoder_embed|mask_token|decoder_pos_embed|decoder_blocks|decoder_norm|"
                          r"decoder_pred)(\.|$)")


def infer_clip_config(sd: dict[str, torch.Tensor]):
    """A transformers ``CLIPConfig`` matching an OpenAI-format ViT CLIP state dict's shapes."""
    from transformers import CLIPConfig

    if "visual.proj" not in sd or "visual.conv1.weight" not in sd:
        raise MedvlkitError("this checkpoint is not a CLIP ViT (no visual.proj / visual.conv1.weight)")
    return CLIPConfig(text_config=text_config_dict(sd), vision_config=vision_config_dict(sd),
                      projection_dim=sd["text_projection"].shape[1])


def vision_config_dict(sd: dict[str, torch.Tensor]) -> dict:
    """The ViT image tower's ``CLIPVisionConfig`` fields, from an OpenAI-format state dict (OpenAI's own settings:
    QuickGELU, heads of width 64, MLP 4x; open_clip folders override them, ``open_clip_folder.vision_fields``)."""
    v_width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, hidden_size=v_width, intermediate_size=4 * v_width,
                patch_size=patch, image_size=patch * grid, num_attention_heads=max(1, v_width // 64),
                num_hidden_layers=_n_layers(sd, "visual.transformer.resblocks"))


def _n_layers(sd: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k.split(".")[len(prefix.split("."))] for k in sd if k.startswith(prefix + ".")})


def text_config_dict(sd: dict[str, torch.Tensor]) -> dict:
    """The text transformer's ``CLIPTextConfig`` fields, from an OpenAI-format state dict (ViT or ResNet CLIP)."""
    t_width = sd["ln_final.weight"].shape[0]
    vocab = sd["token_embedding.weight"].shape[0]
    return dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, vocab_size=vocab, hidden_size=t_width,
                intermediate_size=4 * t_width, num_hidden_layers=_n_layers(sd, "transformer.resblocks"),
                num_attention_heads=max(1, t_width // 64), max_position_embeddings=sd["positional_embedding"].shape[0],
                # OpenAI pools the end-of-text token, which is the highest id of its vocabulary.
                eos_token_id=vocab - 1, bos_token_id=vocab - 2, pad_token_id=vocab - 1)


def openai_to_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and split an OpenAI-format CLIP state dict into CLIPModel's layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _JIT_EXTRAS or key == "attn_mask" or key.endswith(".attn_mask"):
            continue
        if key in _PLAIN_MAP:
            out[_PLAIN_MAP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        else:
            out.update(_convert_block_key(key, value))
    return out


def _convert_block_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    for src, dst in _TOWERS:
        m = re.fullmatch(re.escape(src) + r"\.(\d+)\.(.+)", key)
        if not m:
            continue
        layer, rest = m.groups()
        base = f"{dst}.{layer}"
        if rest.startswith("attn.in_proj_"):
            kind = rest.rsplit("_", 1)[1]  # weight | bias
            q, k, v = value.chunk(3, dim=0)
            return {f"{base}.self_attn.{n}_proj.{kind}": t.contiguous() for n, t in zip("qkv", (q, k, v))}
        for o, h in _BLOCK_MAP:
            if rest.startswith(o + "."):
                return {f"{base}.{h}{rest[len(o):]}": value}
    raise MedvlkitError(f"unexpected tensor '{key}' in OpenAI-format checkpoint; is this a CLIP state dict?")


def hf_to_openai_state_dict(model) -> dict[str, torch.Tensor]:
    """The inverse conversion: a CLIPModel's weights in OpenAI's layout (for export and tests)."""
    hf = model.state_dict()
    out = {o: hf[h] for o, h in _PLAIN_MAP.items()}
    out.update({o: hf[h].t().contiguous() for o, h in _TRANSPOSED.items()})
    for src, dst in _TOWERS:
        n = len({k.split(".")[3] for k in hf if k.startswith(dst + ".")})
        for i in range(n):
            base = f"{dst}.{i}"
            for kind in ("weight", "bias"):
                out[f"{src}.{i}.attn.in_proj_{kind}"] = torch.cat(
                    [hf[f"{base}.self_attn.{n_}_proj.{kind}"] for n_ in "qkv"], dim=0)
                for o, h in _BLOCK_MAP:
                    out[f"{src}.{i}.{o}.{kind}"] = hf[f"{base}.{h}.{kind}"]
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a .pt/.pth state dict without running code from the file.

    See :func:`~medvlkit.models.weight_files.read_weights` (TorchScript archives, OpenAI's released files, are never
    executed); ``module.`` / ``model.`` key prefixes of wrapped models are removed.
    """
    if not path.is_file():
        raise MedvlkitError(f"checkpoint '{path}' does not exist; pass openai-ckpt:<path to .pt/.pth file>")
    sd = read_weights(path, "is it a complete .pt/.pth PyTorch checkpoint?")
    return {k.removeprefix("module.").removeprefix("model."): v for k, v in sd.items()}


def drop_mae_decoder(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``sd`` without the tensors of an MAE decoder trained beside its ViT (EyeCLIP's release), saying so."""
    kept = {k: v for k, v in sd.items() if not _MAE_DECODER.match(k)}
    if len(kept) < len(sd):
        logger.info("%s: left out the %d tensors of the MAE decoder its ViT was trained with (visual.decoder.*, as "
                    "EyeCLIP's checkpoints carry); CLIP's embeddings do not use it", path.name, len(sd) - len(kept))
    return kept


def find_tokenizer(ckpt: Path, tokenizer: str | None, vocab_size: int | None = None):
    """The CLIP BPE tokenizer: ``tokenizer`` dir, else files beside the checkpoint, else OpenAI CLIP's vocabulary
    that medvlkit ships (:mod:`medvlkit.models.clip_bpe`) when the checkpoint's vocabulary is that size.

    With ``vocab_size`` (the checkpoint's), the tokenizer must end its texts with id ``vocab_size - 1``: OpenAI's
    text towers pool the highest id, and a tokenizer of another vocabulary would make them pool the wrong token
    silently."""
    from transformers import AutoTokenizer, CLIPTokenizer

    candidates = [Path(tokenizer).expanduser()] if tokenizer else [ckpt.parent]
    for d in candidates:
        tok: Any = None
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
        elif (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
        if tok is not None:
            if vocab_size is not None and tok.eos_token_id != vocab_size - 1:
                raise MedvlkitError(f"the tokenizer in {d} ends texts with id {tok.eos_token_id}, but {ckpt.name} has "
                                    f"a vocabulary of {vocab_size} whose end-of-text id is {vocab_size - 1}: it is "
                                    "not this model's tokenizer (pass the right one with --tokenizer DIR)")
            return tok
    if tokenizer:
        raise MedvlkitError(f"--tokenizer {tokenizer}: no vocab.json + merges.txt or tokenizer.json there")
    if vocab_size is None or vocab_size == VOCAB_SIZE:  # OpenAI's vocabulary: medvlkit ships it
        return clip_tokenizer()
    raise MedvlkitError(
        f"no tokenizer beside '{ckpt}', whose text tower has a vocabulary of {vocab_size} (OpenAI CLIP's, which "
        f"medvlkit ships, has {VOCAB_SIZE}): put the model's vocab.json and merges.txt (or tokenizer.json) next to "
        "the checkpoint or pass --tokenizer DIR")


# CheXzero's released checkpoints are named best_<batch>_<lr>_original_<step>_<score>.pt
_CHEXZERO_NAME = re.compile(r"best_\d+_[\d.e-]+_original_\d+_[\d.]+\.pt")


def preprocess_for(path: Path, image_size: int) -> PreprocessCfg:
    """The preprocessing of an OpenAI-format checkpoint: a ``preprocess.json`` beside it (PreprocessCfg fields),
    CheXzero's for its released files, else OpenAI CLIP's (bicubic, short side + centre crop, CLIP mean/std)."""
    from medvlkit.models.presets import CHEXZERO_PREPROCESS

    own = preprocess_beside(path.parent)
    if own is not None:
        return own
    if _CHEXZERO_NAME.fullmatch(path.name):
        cfg = dataclasses.replace(CHEXZERO_PREPROCESS, image_size=image_size)  # 224 for the released weights
        logger.info("%s is a CheXzero checkpoint: using CheXzero's preprocessing (%s)", path.name, cfg.describe())
        return cfg
    return PreprocessCfg(image_size=image_size)


def load_openai_ckpt(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                     tokenizer: str | None = None) -> ModelBase:
    """Load an OpenAI-format CLIP checkpoint as a transformers CLIPModel behind the medvlkit surface."""
    from transformers import CLIPModel

    path = Path(ref).expanduser()
    sd = drop_mae_decoder(read_state_dict(path), path)
    if "visual.layer1.0.conv1.weight" in sd:
        return load_resnet_clip(path, sd, device, dtype, tokenizer)
    try:
        config = infer_clip_config(sd)
        model = CLIPModel(config)
        missing, unexpected = model.load_state_dict(openai_to_hf_state_dict(sd), strict=False)
    except (KeyError, IndexError, ValueError, RuntimeError, MedvlkitError) as err:
        raise MedvlkitError(f"'{path}' is not a complete OpenAI-format CLIP checkpoint ({first_line(err)}); it may be "
                            "truncated, or hold another model") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise MedvlkitError(f"'{path}' does not match the inferred CLIP architecture: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    cfg = preprocess_for(path, config.vision_config.image_size)
    tok = find_tokenizer(path, tokenizer, config.text_config.vocab_size)
    logger.info("converted %s: ViT width %d, %d layers, image %d px", path, config.vision_config.hidden_size,
                config.vision_config.num_hidden_layers, cfg.image_size)
    moved = cast(Any, model).to(device=device, dtype=dtype)
    return HFDualEncoder(moved, tok, cfg, name=f"openai-ckpt:{ref}",
                         weight_files=[str(path)])


def load_resnet_clip(path: Path, sd: dict[str, torch.Tensor], device: str, dtype: torch.dtype,
                     tokenizer: str | None) -> ModelBase:
    """An OpenAI ResNet CLIP (RN50...) state dict as :class:`~medvlkit.models.clip_resnet.ResNetCLIP`."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from medvlkit.models.clip_resnet import ModifiedResNet, ResNetCLIP, infer_resnet_config

    try:
        visual = ModifiedResNet(**infer_resnet_config(sd))
        visual_sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
        v_missing, v_unexpected = visual.load_state_dict(visual_sd, strict=False)
        text = CLIPTextModelWithProjection(CLIPTextConfig(**text_config_dict(sd),
                                                          projection_dim=sd["text_projection"].shape[1]))
        text_sd = openai_to_hf_state_dict({k: v for k, v in sd.items()
                                           if not k.startswith("visual.") and k != "logit_scale"})
        t_missing, t_unexpected = text.load_state_dict(text_sd, strict=False)
        logit_scale = sd["logit_scale"]
    except (KeyError, IndexError, ValueError, RuntimeError) as err:
        raise MedvlkitError(f"'{path}' is not a complete OpenAI-format ResNet CLIP checkpoint ({first_line(err)})") \
            from None
    missing = [k for k in v_missing + t_missing if not k.endswith("position_ids")]
    if missing or v_unexpected or t_unexpected:
        raise MedvlkitError(f"'{path}' does not match the inferred ResNet CLIP: missing {missing[:5]}, unexpected "
                            f"{(v_unexpected + t_unexpected)[:5]}")
    arch = infer_resnet_config(sd)
    cfg = preprocess_for(path, arch["input_resolution"])
    tok = find_tokenizer(path, tokenizer, text.config.vocab_size)
    model = ResNetCLIP(visual, text, tok, logit_scale, cfg, name=f"openai-ckpt:{path}",
                       weight_files=[str(path)])
    logger.info("converted %s: ResNet CLIP, layers %s, width %d, image %d px", path, arch["layers"], arch["width"],
                cfg.image_size)
    return model.to(device=device, dtype=dtype)
