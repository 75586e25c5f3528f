"""open_clip models whose text tower is a Hugging Face BERT (``text_cfg.hf_model_name``): BiomedCLIP,
QuiltNet-B-16-PMB and the like, read from their hub folder (``open_clip_config.json`` + ``open_clip_model.safetensors``
or ``open_clip_pytorch_model.bin`` + tokenizer files) into medvlkit's own modules, so they run and fine-tune where
open_clip, torchvision and timm are absent. Every option is read from the config as open_clip 3.3.0 reads it
(its defaults too); an option medvlkit does not implement is refused by name, never approximated.

- image, either
  - timm's ``VisionTransformer`` (``timm_model_name`` ``vit_*``) as BiomedCLIP configures it (``timm_pool`` "" = the
    class token after the final norm; patch convolution with bias; fused ``qkv``; exact GELU; LayerNorm eps 1e-6),
    then ``head.proj`` (``timm_proj`` "linear": Linear, no bias). Keys ``visual.trunk.*``, ``visual.head.proj.weight``;
  - or open_clip's own ``VisionTransformer`` (``width``/``layers``/``patch_size``; GELU, or QuickGELU with
    ``quick_gelu``), converted to transformers' ``CLIPVisionModelWithProjection`` (the class token after
    ``ln_post``, times ``proj``), as ``open_clip:DIR`` reads open_clip's own CLIPs. Keys ``visual.*``.
- text: transformers' ``BertModel`` (its pooler built only for ``cls_pooler``, as open_clip builds it), attention
  mask = ids != pad (open_clip ignores the tokenizer's own mask), pooled by ``hf_pooler_type``:
  ``cls_last_hidden_state_pooler`` (``last_hidden_state[:, 0]``), ``cls_pooler`` (BERT's pooler output) or
  ``mean_pooler`` (the masked mean; open_clip's default); projected by ``hf_proj_type``: ``mlp`` (Linear -> GELU ->
  Linear, no biases, hidden ``(width + embed) // 2``; open_clip's default), ``linear`` (no bias), or none when the
  widths match. open_clip's ``max_pooler`` masks the real tokens instead of the padding (open_clip 3.3.0
  ``hf_model.py``): refused rather than reproduced. Keys ``text.transformer.*``, ``text.proj*``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import LearnedTemperature, ModelBase, PreprocessCfg, TextBatch, TokenizerRecipe, l2_normalize
from medvlkit.models.bert_files import bert_config_from_shapes
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
    """timm ViT trunk with class-token pooling. (B, 3, S, S) -> (B, width); :meth:`tokens` gives every token."""

    def __init__(self, width: int, depth: int, heads: int, patch: int, n_patches: int, mlp: int) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(width, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, width))
        self.blocks = nn.Sequential(*[TimmBlock(width, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the final norm (timm's ``forward_features``): (B, 1 + N, width)."""
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0]


POOLERS = ("cls_last_hidden_state_pooler", "cls_pooler", "mean_pooler")
PROJ_TYPES = ("mlp", "linear", None)


class _ClipVision(nn.Module):
    """open_clip's own ViT as transformers' ``CLIPVisionModelWithProjection``'s vision model: the pooled class token."""

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixels).pooler_output


class HFTextCLIP(LearnedTemperature, ModelBase):
    """An open_clip model with a Hugging Face BERT text tower (see the module docstring) behind the medvlkit surface.

    Args:
        trunk: the image tower up to its pooled feature (a :class:`TimmViT` or open_clip's ViT as transformers'
            CLIP vision model).
        image_proj: the image projection (Linear, no bias).
        bert: transformers' ``BertModel``.
        pooler: one of :data:`POOLERS`.
        text_proj: the text projection (:data:`PROJ_TYPES`).
    """

    # ViT attention/MLP (timm: qkv, fc1, fc2; open_clip's own as transformers CLIP: q_proj, v_proj), BERT attention
    default_lora_targets = ("qkv", "fc1", "fc2", "q_proj", "v_proj", "query", "value")

    def __init__(self, trunk: nn.Module, image_proj: nn.Linear, bert, pooler: str, text_proj: nn.Module, tokenizer,
                 logit_scale: torch.Tensor, context_length: int, preprocess_cfg: PreprocessCfg, name: str,
                 weight_files: list[str]) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.trunk, self.image_proj, self.bert, self.text_proj = trunk, image_proj, bert.eval(), text_proj
        self.pooler = pooler
        self.tokenizer, self.name, self.context_length = tokenizer, name, context_length
        self.log_logit_scale = nn.Parameter(logit_scale.detach().clone().float().reshape(()))
        self.embed_dim = int(image_proj.out_features)
        self.eval()

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.trunk, self.image_proj], "text": [self.bert, self.text_proj]}

    def token_recipe(self) -> TokenizerRecipe:
        return TokenizerRecipe(self.context_length, keys=("input_ids",))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.image_proj(self.trunk(pixels.to(self.device, self.dtype)))
        return l2_normalize(feats) if normalize else feats

    def text_word_embedding(self) -> torch.nn.Module:
        return self.bert.get_input_embeddings()

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        ids = tokens["input_ids"].to(self.device)
        mask = (ids != self.bert.config.pad_token_id).long()  # open_clip ignores the tokenizer's own mask
        out = self.bert(input_ids=ids, attention_mask=mask)
        if self.pooler == "mean_pooler":
            pooled = (out.last_hidden_state * mask.unsqueeze(-1)).sum(1) / mask.sum(-1, keepdim=True)
        elif self.pooler == "cls_pooler":
            pooled = out.pooler_output
        else:
            pooled = out.last_hidden_state[:, 0]
        feats = self.text_proj(pooled)
        return l2_normalize(feats) if normalize else feats

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk(pixels.to(self.device, self.dtype))


BiomedCLIP = HFTextCLIP  # BiomedCLIP is one configuration of it (timm ViT, cls_last_hidden_state_pooler, mlp)


def bert_tower(sd: dict[str, torch.Tensor], folder: Path, text_cfg: dict, with_pooler: bool, what: str):
    """transformers' BertModel from the checkpoint: config from ``hf_model_name`` when it is a local folder, else
    inferred from the tensor shapes (heads of width 64, as every released BERT)."""
    from transformers import BertConfig, BertModel

    bert_sd = {k[len("text.transformer."):]: v for k, v in sd.items() if k.startswith("text.transformer.")}
    bert_sd.pop("embeddings.position_ids", None)  # written by transformers < 4.31; open_clip deletes it too
    local = folder / str(text_cfg.get("hf_model_name", ""))
    if (local / "config.json").is_file():
        config = BertConfig.from_json_file(str(local / "config.json"))
        if getattr(config, "model_type", "bert") != "bert":
            raise MedvlkitError(f"{what}{folder}: the text tower is a '{config.model_type}' model; medvlkit reads "
                                "BERT text towers natively (install the open_clip package for others)")
    else:  # the config is not in the folder: only a BERT is inferred from the shapes (a RoBERTa has the same keys
        name = str(text_cfg.get("hf_model_name", "")).lower()  # but other positions and padding: never taken for one)
        if "bert" not in name or "roberta" in name:
            raise MedvlkitError(f"{what}{folder}: the text tower '{text_cfg.get('hf_model_name')}' is read natively "
                                "only as a BERT, and its config.json is not in the folder to say what it is; put "
                                "it in the folder named by hf_model_name, or install the open_clip package")
        config = bert_config_from_shapes(bert_sd)
    bert = BertModel(config, add_pooling_layer=with_pooler)
    missing, unexpected = bert.load_state_dict(bert_sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise MedvlkitError(f"{what}{folder}: the text tower does not match a BERT: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
    return bert


def timm_trunk(sd: dict[str, torch.Tensor], heads: int | None = None) -> TimmViT:
    """The timm ViT under ``visual.trunk.*`` (open_clip's timm image towers: BiomedCLIP, CONCH), its sizes read from
    the weights; ``heads`` as given, else heads of width 64 (qkv is fused: the weights do not say)."""
    width = sd["visual.trunk.cls_token"].shape[-1]
    trunk = TimmViT(width, len({k.split(".")[3] for k in sd if k.startswith("visual.trunk.blocks.")}),
                    heads or max(1, width // 64), sd["visual.trunk.patch_embed.proj.weight"].shape[-1],
                    sd["visual.trunk.pos_embed"].shape[1] - 1, sd["visual.trunk.blocks.0.mlp.fc1.weight"].shape[0])
    trunk.load_state_dict({k[len("visual.trunk."):]: v for k, v in sd.items() if k.startswith("visual.trunk.")})
    return trunk


def _timm_vision(sd: dict[str, torch.Tensor], vision_cfg: dict, embed_dim: int) -> tuple[nn.Module, nn.Linear]:
    width = sd["visual.trunk.cls_token"].shape[-1]
    heads = vision_cfg.get("heads") or TIMM_VIT_HEADS.get(str(vision_cfg.get("timm_model_name")))
    trunk = timm_trunk(sd, int(heads) if heads else None)
    image_proj = nn.Linear(width, embed_dim, bias=False)
    image_proj.load_state_dict({"weight": sd["visual.head.proj.weight"]})
    return trunk, image_proj


def open_clip_vision(sd: dict[str, torch.Tensor], model_cfg: dict) -> tuple[nn.Module, nn.Linear]:
    """open_clip's own ViT (``visual.*`` keys) as transformers' ``CLIPVisionModelWithProjection``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from medvlkit.models.open_clip_folder import vision_fields
    from medvlkit.models.openai_ckpt import openai_to_hf_state_dict, vision_config_dict

    fields = vision_config_dict(sd)
    fields |= vision_fields(model_cfg, fields["hidden_size"])
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**fields, projection_dim=sd["visual.proj"].shape[1]))
    missing, unexpected = model.load_state_dict(
        openai_to_hf_state_dict({k: v for k, v in sd.items() if k.startswith("visual.")}), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise MedvlkitError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return _ClipVision(model.vision_model), model.visual_projection


def text_projection(sd: dict[str, torch.Tensor], proj_type, width: int, embed_dim: int) -> nn.Module:
    if proj_type == "mlp":
        w0, w2 = sd["text.proj.0.weight"], sd["text.proj.2.weight"]
        proj: nn.Module = nn.Sequential(nn.Linear(w0.shape[1], w0.shape[0], bias=False), nn.GELU(),
                                        nn.Linear(w2.shape[1], w2.shape[0], bias=False))
        proj.load_state_dict({"0.weight": w0, "2.weight": w2})
    elif proj_type == "linear":
        proj = nn.Linear(width, embed_dim, bias=False)
        proj.load_state_dict({"weight": sd["text.proj.weight"]})
    else:
        proj = nn.Identity()
    return proj


def check_options(model_cfg: dict, what: str, folder: Path) -> tuple[str, str | None]:
    """The text tower's pooler and projection as open_clip reads them (its defaults: ``mean_pooler``, ``mlp``), and
    the image tower's kind; anything medvlkit does not implement is refused by name.

    Raises:
        MedvlkitError: a pooler, projection or image tower medvlkit does not implement.
    """
    vision_cfg, text_cfg = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    # open_clip before 2.21 named them pooler_type and proj (BiomedCLIP's hub config did for years): the same options
    for new, old in (("hf_pooler_type", "pooler_type"), ("hf_proj_type", "proj")):
        if new in text_cfg and old in text_cfg and text_cfg[new] != text_cfg[old]:
            raise MedvlkitError(f"{what}{folder}: text_cfg says {new}={text_cfg[new]!r} and (open_clip's older name) "
                                f"{old}={text_cfg[old]!r}; which one the weights were trained with is unclear")
    pooler = text_cfg.get("hf_pooler_type", text_cfg.get("pooler_type", "mean_pooler"))
    proj = text_cfg.get("hf_proj_type", text_cfg.get("proj", "mlp"))
    if pooler not in POOLERS:
        raise MedvlkitError(f"{what}{folder}: hf_pooler_type '{pooler}' is not read natively (medvlkit reads "
                            f"{', '.join(POOLERS)}; open_clip's max_pooler masks the real tokens, not the padding)")
    if proj not in PROJ_TYPES:
        raise MedvlkitError(f"{what}{folder}: hf_proj_type '{proj}'; medvlkit reads mlp, linear or none")
    timm = vision_cfg.get("timm_model_name")
    if timm and not (str(timm).startswith("vit_") and vision_cfg.get("timm_pool", "") in ("", "token")
                     and vision_cfg.get("timm_proj", "linear") == "linear"):
        raise MedvlkitError(f"{what}{folder}: a {timm} image tower (pool {vision_cfg.get('timm_pool')!r}, proj "
                            f"{vision_cfg.get('timm_proj')!r}) needs the open_clip package: pip install "
                            "'medvlkit[open_clip]'")
    return pooler, proj


def load_hf_text_clip(folder: Path, what: str, device: str = "cpu",
                      dtype: torch.dtype = torch.float32) -> HFTextCLIP:
    """An open_clip hub folder whose text tower is a Hugging Face BERT (see the module docstring).

    Raises:
        MedvlkitError: a missing or malformed file, an option medvlkit does not implement, or weights that do not
            match the config.
    """
    from transformers import AutoTokenizer

    from medvlkit.models.open_clip_folder import preprocess_from_config, read_open_clip_config, weights_file

    cfg = read_open_clip_config(folder, what.rstrip(":"))
    model_cfg = cfg["model_cfg"]
    vision_cfg, text_cfg = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    pooler, proj_type = check_options(model_cfg, what, folder)
    weights = weights_file(folder, what.rstrip(":"))
    sd = read_weights(weights, "is it an open_clip checkpoint?")
    try:
        trunk, image_proj = (_timm_vision(sd, vision_cfg, model_cfg["embed_dim"]) if vision_cfg.get("timm_model_name")
                             else open_clip_vision(sd, model_cfg))
        bert = bert_tower(sd, folder, text_cfg, pooler == "cls_pooler", what)
        text_proj = text_projection(sd, proj_type, bert.config.hidden_size, model_cfg["embed_dim"])
        logit_scale = sd["logit_scale"]
    except (KeyError, RuntimeError, ValueError, IndexError) as err:
        raise MedvlkitError(f"{what}{folder}: {weights.name} does not match its open_clip_config.json "
                            f"({first_line(err)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for missing tokenizer files
        raise MedvlkitError(f"{what}{folder}: no tokenizer files there ({first_line(err)})") from None
    size = vision_cfg.get("image_size", 224)
    preprocess = preprocess_from_config(cfg, size[0] if isinstance(size, list) else size)
    model = HFTextCLIP(trunk, image_proj, bert, pooler, text_proj, tokenizer, logit_scale,
                       int(text_cfg.get("context_length", 77)), preprocess, f"{what}{folder}", [str(weights)])
    return model.to(device=device, dtype=dtype)
