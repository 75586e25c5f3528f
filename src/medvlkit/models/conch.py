"""CONCH (Lu et al., Nature Medicine 2024; github.com/mahmoodlab/CONCH) from its released ``pytorch_model.bin`` (the
gated hub repository ``MahmoodLab/CONCH``): a CoCa model for histopathology, of which medvlkit reads the contrastive
towers. The caption decoder and its attentional pooler are in the release but serve only captioning: they are left
out by name, and any other tensor is refused.

Architecture as ``conch/open_clip_custom`` with ``conch_ViT-B-16.json``:

- image: timm's ViT-B/16 at 448 px (``visual.trunk.*``; LayerNorm eps 1e-6, fused qkv, class token, heads of width
  64), every token after the final norm -> ``AttentionalPooler`` with one query (``visual.attn_pool_contrast.*``:
  ``ln_k`` on the tokens, ``ln_q`` on the query, ``nn.MultiheadAttention`` of the embedding width over the ViT's width
  with 8 heads, the default CONCH's ``VisualModel`` keeps since ``_build_vision_tower`` never passes
  ``attn_pooler_heads``) -> ``ln_contrast`` -> ``@ proj_contrast``. Preprocessing (``create_model_from_pretrained``):
  short side to 448 (bicubic) + centre crop, OpenAI CLIP's mean/std.
- text: open_clip's CoCa ``TextTransformer`` with ``embed_cls`` (``text.*``): ids (127 of CONCH's 128 positions, as
  ``custom_tokenizer.tokenize`` pads them and ``CoCa._encode_text`` cuts the placeholder again), a learned class
  embedding appended, positions, a causal mask plus open_clip's class-token mask (the class token's row sees key 0
  and every key whose PREVIOUS id is not padding: open_clip's ``build_cls_mask``, shift included), 12 pre-norm blocks
  with GELU, ``ln_final`` on the class token, ``@ text_projection``. Padding id 0.
- temperature: ``logit_scale``.

CONCH's tokenizer (``conch_byte_level_bpe_uncased.json``, in CONCH's GitHub package, not in its hub repository) is
under CONCH's CC-BY-NC-ND 4.0 terms, so medvlkit cannot ship it: put it beside the weights or pass ``--tokenizer``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import LearnedTemperature, ModelBase, PreprocessCfg, TextBatch, TokenizerRecipe, l2_normalize
from medvlkit.models.hf_text_clip import TimmViT, timm_trunk
from medvlkit.models.hub import resolve_folder
from medvlkit.models.preprocess import preprocess_beside
from medvlkit.models.weight_files import read_weights

logger = logging.getLogger(__name__)
TOKENIZER_FILE = "conch_byte_level_bpe_uncased.json"
POOLER_HEADS = 8  # VisualModel's default: _build_vision_tower does not pass vision_cfg.attn_pooler_heads
PAD_ID = 0  # CLIPTextCfg.pad_id
_CAPTION_ONLY = ("visual.attn_pool_caption.", "visual.ln_caption.", "text_decoder.")


class _SelfAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (``in_proj_weight``/``in_proj_bias``, ``out_proj``) computed with
    modules that are called, so LoRA on ``out_proj`` takes effect (torch's own reads ``out_proj.weight`` directly)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).reshape(b, n, 3, self.heads, -1) \
            .permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, hd)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    """open_clip's ``ResidualAttentionBlock`` (pre-norm, GELU MLP 4x, no layer scale)."""

    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = _SelfAttention(width, heads)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, mlp))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(mlp, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class _Resblocks(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([_Block(width, heads, mlp) for _ in range(layers)])


class CoCaText(nn.Module):
    """open_clip's CoCa ``TextTransformer`` with ``embed_cls`` (see the module docstring). (B, T) ids -> (B, embed)."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, positions: int, mlp: int, embed: int) -> None:
        super().__init__()
        self.heads = heads
        self.token_embedding = nn.Embedding(vocab, width)
        self.cls_emb = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(positions, width))
        self.transformer = _Resblocks(width, layers, heads, mlp)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, embed))

    def mask(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, T+1, T+1) additive: causal, plus open_clip's ``build_cls_mask`` (shift and all)."""
        n = ids.shape[1] + 1
        causal = torch.full((n, n), float("-inf"), device=ids.device, dtype=dtype).triu_(1)
        allowed = F.pad((ids != PAD_ID).unsqueeze(1), (1, 0, n - 1, 0), value=True)  # (B, n, n)
        cls = torch.zeros(allowed.shape, device=ids.device, dtype=dtype).masked_fill_(~allowed, float("-inf"))
        return (causal[None] + cls)[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids)
        x = torch.cat([x, self.cls_emb.expand(len(x), 1, -1)], dim=1)
        x = x + self.positional_embedding[:x.shape[1]]
        mask = self.mask(ids, x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        return self.ln_final(x[:, -1]) @ self.text_projection


class _CrossAttention(nn.Module):
    """``nn.MultiheadAttention(d_model, heads, kdim=context, vdim=context)``'s parameters under its names (separate
    ``q/k/v_proj_weight`` when the widths differ, as in CONCH; ``in_proj_weight`` when they match), computed with an
    ``out_proj`` that is called, so LoRA on it takes effect."""

    def __init__(self, d_model: int, context: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        if context == d_model:
            self.in_proj_weight = nn.Parameter(torch.zeros(3 * d_model, d_model))
        else:
            self.q_proj_weight = nn.Parameter(torch.zeros(d_model, d_model))
            self.k_proj_weight = nn.Parameter(torch.zeros(d_model, context))
            self.v_proj_weight = nn.Parameter(torch.zeros(d_model, context))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "in_proj_weight"):
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = self.in_proj_bias.chunk(3)

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, H, N, C / H)
            return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(F.linear(q, wq, bq)), heads(F.linear(kv, wk, bk)),
                                           heads(F.linear(kv, wv, bv)))
        return self.out_proj(y.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1))


class AttentionalPooler(nn.Module):
    """CoCa's ``AttentionalPooler``: learned queries attending to the image tokens."""

    def __init__(self, d_model: int, context: int, heads: int, queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(queries, d_model))
        self.attn = _CrossAttention(d_model, context, heads)
        self.ln_q, self.ln_k = nn.LayerNorm(d_model), nn.LayerNorm(context)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.ln_q(self.query).expand(len(tokens), -1, -1)
        return self.attn(q, self.ln_k(tokens))


class CONCH(LearnedTemperature, ModelBase):
    """CONCH's contrastive towers behind the medvlkit surface."""

    default_lora_targets = ("qkv", "fc1", "fc2", "out_proj", "c_fc", "c_proj")  # ViT blocks, text blocks

    def __init__(self, trunk: TimmViT, pooler: AttentionalPooler, ln_contrast: nn.LayerNorm, proj: torch.Tensor,
                 text: CoCaText, tokenizer, logit_scale: torch.Tensor, preprocess_cfg: PreprocessCfg, name: str,
                 weight_files: list[str]) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.trunk, self.pooler, self.ln_contrast, self.text = trunk, pooler, ln_contrast, text
        self.proj_contrast = nn.Parameter(proj.detach().clone())
        self.tokenizer, self.name = tokenizer, name
        self.context_length = int(text.positional_embedding.shape[0]) - 1  # the last position is the class token's
        self.log_logit_scale = nn.Parameter(logit_scale.detach().clone().float().reshape(()))
        self.embed_dim = int(proj.shape[1])
        self.eval()

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.trunk, self.pooler, self.ln_contrast], "text": [self.text]}

    def token_recipe(self) -> TokenizerRecipe:
        return TokenizerRecipe(self.context_length, padding="max_length", keys=("input_ids",))

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The pooled, normalised-by-LayerNorm feature before the projection: CONCH's ``encode_image(...,
        proj_contrast=False)``, which its authors use for linear probes."""
        tokens = self.trunk.tokens(pixels.to(self.device, self.dtype))
        return self.ln_contrast(self.pooler(tokens)[:, 0])

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.image_backbone_features(pixels) @ self.proj_contrast
        return l2_normalize(feats) if normalize else feats

    def text_word_embedding(self) -> torch.nn.Module:
        return self.text.token_embedding

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        feats = self.text(tokens["input_ids"].to(self.device))
        return l2_normalize(feats) if normalize else feats


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("pytorch_model.bin", "model.safetensors"):
        if (path / name).is_file():
            return path / name
    raise MedvlkitError(f"conch:{path}: no pytorch_model.bin there; accept CONCH's terms at "
                        "huggingface.co/MahmoodLab/CONCH, set HF_TOKEN, then: hf download MahmoodLab/CONCH "
                        f"pytorch_model.bin --local-dir {path}")


def _tokenizer(weights: Path, tokenizer: str | None):
    from transformers import PreTrainedTokenizerFast

    given = Path(tokenizer).expanduser() if tokenizer else None
    candidates = [given / TOKENIZER_FILE, given / "tokenizer.json"] if given and given.is_dir() else \
        [given] if given else [weights.parent / TOKENIZER_FILE, weights.parent / "tokenizer.json"]
    found = next((p for p in candidates if p is not None and p.is_file()), None)
    if found is None:
        where = f"at {given}" if given else f"beside {weights}"
        raise MedvlkitError(f"CONCH's tokenizer {TOKENIZER_FILE} is not {where}: "
                            "it ships in CONCH's GitHub package (conch/open_clip_custom/tokenizers/), not in its hub "
                            "repository, and its CC-BY-NC-ND terms keep medvlkit from shipping it; copy it beside the "
                            "weights or pass --tokenizer FILE")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(found), bos_token="<start_of_text>", eos_token="<end_of_text>",
                                  pad_token="<pad>")  # CONCH's get_tokenizer()
    if tok.pad_token_id != PAD_ID:
        raise MedvlkitError(f"{found}: '<pad>' is id {tok.pad_token_id}, CONCH's text tower masks id {PAD_ID}: it is "
                            "not CONCH's tokenizer")
    return tok


def _towers(sd: dict[str, torch.Tensor]) -> tuple[TimmViT, AttentionalPooler, nn.LayerNorm, CoCaText]:
    width = sd["visual.trunk.cls_token"].shape[-1]
    trunk = timm_trunk(sd)  # heads of width 64, as timm's ViT-B/16
    query = sd["visual.attn_pool_contrast.query"]
    pooler = AttentionalPooler(query.shape[1], width, POOLER_HEADS, query.shape[0])
    pooler.load_state_dict({k[len("visual.attn_pool_contrast."):]: v for k, v in sd.items()
                            if k.startswith("visual.attn_pool_contrast.")})
    ln_contrast = nn.LayerNorm(query.shape[1])
    ln_contrast.load_state_dict({"weight": sd["visual.ln_contrast.weight"], "bias": sd["visual.ln_contrast.bias"]})
    vocab, t_width = sd["text.token_embedding.weight"].shape
    text = CoCaText(vocab, t_width, len({k.split(".")[3] for k in sd if k.startswith("text.transformer.resblocks.")}),
                    max(1, t_width // 64), sd["text.positional_embedding"].shape[0],
                    sd["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0], sd["text.text_projection"].shape[1])
    text.load_state_dict({k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")})
    return trunk, pooler, ln_contrast, text


def load_conch(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
               tokenizer: str | None = None) -> CONCH:
    """``conch:DIR`` (a folder holding ``pytorch_model.bin``), ``conch:FILE`` or ``conch:org/name[@revision]`` (the
    hub repository, downloaded; gated: accept its terms and set ``HF_TOKEN``). The tokenizer: ``--tokenizer`` (the
    JSON file or its folder), else beside the weights.

    Raises:
        MedvlkitError: missing weights or tokenizer, or a checkpoint that is not CONCH's.
    """
    path, snap = (Path(ref).expanduser(), None) if Path(ref).expanduser().is_file() else resolve_folder(ref, "conch:")
    weights = _weights_file(path)
    sd = {k.removeprefix("module."): v for k, v in read_weights(weights, "is it CONCH's pytorch_model.bin?").items()}
    if "visual.attn_pool_contrast.query" not in sd or "text.cls_emb" not in sd:
        raise MedvlkitError(f"conch:{weights}: not a CONCH checkpoint (no visual.attn_pool_contrast and text.cls_emb "
                            "in it)")
    kept = {k: v for k, v in sd.items() if not k.startswith(_CAPTION_ONLY)}
    odd = [k for k in kept if not k.startswith(("visual.trunk.", "visual.attn_pool_contrast.", "visual.ln_contrast.",
                                                 "text.")) and k not in ("visual.proj_contrast", "logit_scale")]
    if odd:
        raise MedvlkitError(f"conch:{weights}: tensors CONCH does not have: {', '.join(odd[:5])}")
    logger.info("%s: left out the %d tensors of CONCH's caption decoder and its pooler (captioning only)",
                weights.name, len(sd) - len(kept))
    try:
        trunk, pooler, ln_contrast, text = _towers(kept)
        proj, logit_scale = kept["visual.proj_contrast"], kept["logit_scale"]
    except (KeyError, RuntimeError, ValueError, IndexError) as err:
        raise MedvlkitError(f"conch:{weights}: the checkpoint does not match CONCH's CoCa towers "
                            f"({first_line(err)})") from None
    tok = _tokenizer(weights, tokenizer)
    side = trunk.patch_embed.proj.weight.shape[-1] * round((trunk.pos_embed.shape[1] - 1) ** 0.5)
    cfg = preprocess_beside(weights.parent) or PreprocessCfg(image_size=side)
    model = CONCH(trunk, pooler, ln_contrast, proj, text, tok, logit_scale, cfg, f"conch:{ref}", [str(weights)])
    model.hub_source = snap.record() if snap is not None else None
    return model.to(device=device, dtype=dtype)
