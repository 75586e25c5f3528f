"""BiomedCLIP without open_clip: its hub folder (``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` or
``open_clip_model.safetensors`` + tokenizer files) loaded into medvlkit's own modules, so it runs and fine-tunes
where torchvision and timm are absent.

- image: timm's ``VisionTransformer`` as BiomedCLIP configures it (``timm_pool`` "" = the class token after the
  final norm; patch convolution with bias; fused ``qkv``; exact GELU; LayerNorm eps 1e-6), then ``head.proj``
  (Linear, no bias). Keys ``visual.trunk.*``, ``visual.head.proj.weight``.
- text: transformers' ``BertModel`` without pooler; ``last_hidden_state[:, 0]`` (open_clip's
  ``cls_last_hidden_state_pooler``), attention mask = ids != pad; ``proj`` = Linear -> GELU -> Linear (no biases,
  hidden (width + embed) // 2). Keys ``text.transformer.*``, ``text.proj.{0,2}.weight``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import LearnedTemperature, ModelBase, PreprocessCfg, TextBatch, TokenizerRecipe, l2_normalize
from medvlkit.models.weight_files import read_weights

# timm's heads per ViT name (the weights do not say: qkv is fused); head width 64 in every released ViT.
# "vit_fixture_patch16_64" is the name the reference fixture's make.py registers (2 heads of width 16).
TIMM_VIT_HEADS = {"vit_base_patch16_224": 12, "vit_base_patch32_224": 12, "vit_large_patch16_224": 16,
                  "vit_small_patch16_224": 6, "vit_tiny_patch16_224": 3, "vit_fixture_patch16_64": 2}


class _Attention(nn.Module):
    """timm's attention parameters (``qkv``, ``proj``); the block computes with them."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)


class _Mlp(nn.Module):
    """timm's MLP parameters (``fc1``, ``fc2``)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)


class _PatchEmbed(nn.Module):
    """timm's patch embedding (``proj``)."""

    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, patch, stride=patch)


class TimmBlock(nn.Module):
    """``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` with timm's parameter names."""

    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
        self.attn, self.mlp = _Attention(width), _Mlp(width, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, hd)
        x = x + self.attn.proj(y.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class TimmViT(nn.Module):
    """timm ViT trunk with class-token pooling. (B, 3, S, S) -> (B, width)."""

    def __init__(self, width: int, depth: int, heads: int, patch: int, n_patches: int, mlp: int) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(width, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, width))
        self.blocks = nn.Sequential(*[TimmBlock(width, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


class BiomedCLIP(LearnedTemperature, ModelBase):
    """A BiomedCLIP-layout model (timm ViT + BERT) behind the medvlkit surface."""

    default_lora_targets = ("qkv", "fc1", "fc2", "query", "value")  # ViT attention/MLP, BERT attention

    def __init__(self, trunk: TimmViT, image_proj: nn.Linear, bert, text_proj: nn.Sequential, tokenizer,
                 logit_scale: torch.Tensor, context_length: int, preprocess_cfg: PreprocessCfg, name: str,
                 weight_files: list[str]) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.trunk, self.image_proj, self.bert, self.text_proj = trunk, image_proj, bert.eval(), text_proj
        self.tokenizer, self.name, self.context_length = tokenizer, name, context_length
        self.log_logit_scale = nn.Parameter(logit_scale.detach().clone().float().reshape(()))
        self.embed_dim = image_proj.out_features
        self.eval()

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.trunk, self.image_proj], "text": [self.bert, self.text_proj]}

    def token_recipe(self) -> TokenizerRecipe:
        return TokenizerRecipe(self.context_length, keys=("input_ids",))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.image_proj(self.trunk(pixels.to(self.device, self.dtype)))
        return l2_normalize(feats) if normalize else feats

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        ids = tokens["input_ids"].to(self.device)
        mask = (ids != self.bert.config.pad_token_id).long()  # open_clip ignores the tokenizer's own mask
        feats = self.text_proj(self.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])
        return l2_normalize(feats) if normalize else feats

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk(pixels.to(self.device, self.dtype))


def _bert(sd: dict[str, torch.Tensor], folder: Path, text_cfg: dict):
    """transformers' BertModel from the checkpoint: config from ``hf_model_name`` when it is a local folder, else
    inferred from the tensor shapes (heads of width 64, as every released BERT)."""
    from transformers import BertConfig, BertModel

    local = folder / str(text_cfg.get("hf_model_name", ""))
    if (local / "config.json").is_file():
        config = BertConfig.from_json_file(str(local / "config.json"))
    else:
        hidden = sd["text.transformer.embeddings.word_embeddings.weight"].shape[1]
        config = BertConfig(
            vocab_size=sd["text.transformer.embeddings.word_embeddings.weight"].shape[0], hidden_size=hidden,
            num_hidden_layers=len({k.split(".")[4] for k in sd if k.startswith("text.transformer.encoder.layer.")}),
            num_attention_heads=max(1, hidden // 64),
            intermediate_size=sd["text.transformer.encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=sd["text.transformer.embeddings.position_embeddings.weight"].shape[0])
    bert = BertModel(config, add_pooling_layer=False)
    bert_sd = {k[len("text.transformer."):]: v for k, v in sd.items() if k.startswith("text.transformer.")}
    bert_sd.pop("embeddings.position_ids", None)  # written by transformers < 4.31; open_clip deletes it too
    missing, unexpected = bert.load_state_dict(bert_sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise MedvlkitError(f"biomedclip:{folder}: the text tower does not match a BERT: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
    return bert


def load_biomedclip(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> BiomedCLIP:
    """``biomedclip:DIR``: a folder laid out as the hub repo of BiomedCLIP-PubMedBERT_256-vit_base_patch16_224;
    ``biomedclip:org/name[@revision]``: that repository on the hub (downloaded)."""
    from transformers import AutoTokenizer

    from medvlkit.models.hub import resolve_folder
    from medvlkit.models.open_clip_folder import preprocess_from_config, read_open_clip_config, weights_file

    folder, snap = resolve_folder(ref, "biomedclip:")
    cfg = read_open_clip_config(folder, "biomedclip")
    model_cfg = cfg["model_cfg"]
    vision_cfg, text_cfg = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    weights = weights_file(folder, "biomedclip")
    sd = read_weights(weights, "is it BiomedCLIP's open_clip checkpoint?")
    try:
        width = sd["visual.trunk.cls_token"].shape[-1]
        patch = sd["visual.trunk.patch_embed.proj.weight"].shape[-1]
        depth = len({k.split(".")[3] for k in sd if k.startswith("visual.trunk.blocks.")})
        heads = int(vision_cfg.get("heads") or TIMM_VIT_HEADS.get(vision_cfg.get("timm_model_name"),
                                                                  max(1, width // 64)))
        trunk = TimmViT(width, depth, heads, patch, sd["visual.trunk.pos_embed"].shape[1] - 1,
                        sd["visual.trunk.blocks.0.mlp.fc1.weight"].shape[0])
        trunk.load_state_dict({k[len("visual.trunk."):]: v for k, v in sd.items() if k.startswith("visual.trunk.")})
        image_proj = nn.Linear(width, model_cfg["embed_dim"], bias=False)
        image_proj.load_state_dict({"weight": sd["visual.head.proj.weight"]})
        bert = _bert(sd, folder, text_cfg)
        w0, w2 = sd["text.proj.0.weight"], sd["text.proj.2.weight"]
        text_proj = nn.Sequential(nn.Linear(w0.shape[1], w0.shape[0], bias=False), nn.GELU(),
                                  nn.Linear(w2.shape[1], w2.shape[0], bias=False))
        text_proj.load_state_dict({"0.weight": w0, "2.weight": w2})
        logit_scale = sd["logit_scale"]
    except (KeyError, RuntimeError, ValueError, IndexError) as err:
        raise MedvlkitError(f"biomedclip:{folder}: {weights.name} is not a BiomedCLIP-layout checkpoint "
                            f"({first_line(err)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for missing tokenizer files
        raise MedvlkitError(f"biomedclip:{folder}: no tokenizer files there ({first_line(err)})") from None
    size = vision_cfg.get("image_size", 224)
    preprocess = preprocess_from_config(cfg, size[0] if isinstance(size, list) else size)
    model = BiomedCLIP(trunk, image_proj, bert, text_proj, tokenizer, logit_scale,
                       int(text_cfg.get("context_length", 256)), preprocess, f"biomedclip:{ref}", [str(weights)])
    model.hub_source = snap.record() if snap is not None else None
    return model.to(device=device, dtype=dtype)
