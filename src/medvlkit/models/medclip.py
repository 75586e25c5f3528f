"""MedCLIP (Wang et al., EMNLP 2022; PyPI ``medclip`` 0.0.3) from its released ``pytorch_model.bin``.

Both vision variants of ``medclip/modeling_medclip.py``, told apart by the checkpoint's keys:

- MedCLIP-ViT (``MedCLIPVisionModelViT``): transformers' ``SwinModel`` (swin-tiny-patch4-window7-224), its
  ``pooler_output`` (final LayerNorm, mean over all tokens) -> ``projection_head`` (Linear 768->512, no bias).
- MedCLIP-ResNet (``MedCLIPVisionModel``): torchvision's ResNet-50 (written here in plain torch) whose ``fc`` is the
  projection (Linear 2048->512, no bias).
- text (``MedCLIPTextModel``, Bio_ClinicalBERT): ``hidden_states[1]``, ``[2]`` and ``[-1]`` of a ``BertModel``
  averaged over the layers and over ALL positions, padding included (the mask only enters attention), then
  ``projection_head`` (Linear 768->512, no bias). So a text's embedding depends on how far its batch is padded;
  ``tokenize`` pads to the longest text of the call, as ``MedCLIPProcessor`` does.
- ``logit_scale``: ``exp(clamp(logit_scale, 0, ln 100))`` as ``MedCLIPModel.compute_logits``.
- preprocessing (``MedCLIPFeatureExtractor``): grey, pasted centred on a black square of side max(224, w, h), resized
  to 224 (bicubic), mean 0.5862785803043838 / std 0.27950088968644304. 1-channel input is repeated to 3 channels.

Released files hold transformers-4 Swin names (``attention.self.query``...) and the persistent
``relative_position_index`` buffers; transformers 5 renamed them (``attention.q_proj``...). The loader translates
either layout into the installed version's and checks the structural index buffers instead of dropping them blindly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import ModelBase, PreprocessCfg, TextBatch, TokenizerRecipe, l2_normalize
from medvlkit.models.preprocess import preprocess_beside
from medvlkit.models.torchvision_resnet import TorchvisionResNet
from medvlkit.models.weight_files import read_weights

IMG_MEAN, IMG_STD = 0.5862785803043838, 0.27950088968644304  # medclip/constants.py
MEDCLIP_PREPROCESS = PreprocessCfg(image_size=224, mean=(IMG_MEAN,) * 3, std=(IMG_STD,) * 3, interpolation="bicubic",
                                   resize_mode="square", grayscale=True)
MAX_LOG_SCALE = math.log(100.0)  # compute_logits: torch.clamp(self.logit_scale.data, 0, 4.6052)
CONTEXT_LENGTH = 77  # MedCLIPProcessor: tokenizer.model_max_length = 77

# transformers 4.x -> 5.x names of SwinModel parameters (inside encoder.layers.*)
SWIN_V4_TO_V5 = (
    (".attention.self.relative_position_bias_table", ".attention.relative_position_bias.relative_position_bias_table"),
    (".attention.self.query.", ".attention.q_proj."),
    (".attention.self.key.", ".attention.k_proj."),
    (".attention.self.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
)
_INDEX_SUFFIX = ".attention.self.relative_position_index"
# Bio_ClinicalBERT (bert-base-cased sizes) and swin-tiny-patch4-window7-224: used when no config.json is given
BIO_CLINICALBERT: dict[str, Any] = dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)


class MedCLIP(ModelBase):
    """MedCLIP (either vision variant) behind the medvlkit surface."""

    def __init__(self, vision: nn.Module, vision_proj: nn.Module | None, bert, text_proj: nn.Linear, tokenizer,
                 logit_scale: torch.Tensor, preprocess_cfg: PreprocessCfg, name: str, weight_files: list[str],
                 swin: bool) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.vision, self.vision_proj, self.bert, self.text_proj = vision, vision_proj, bert, text_proj
        self.tokenizer, self.name, self.swin = tokenizer, name, swin
        self.log_logit_scale = nn.Parameter(logit_scale.detach().clone().float().reshape(()))
        self.embed_dim = int(text_proj.out_features)
        self.context_length = min(CONTEXT_LENGTH, int(bert.config.max_position_embeddings))
        # Swin: attention projections and MLP; ResNet: its 1x1 convolutions; BERT: query/value
        self.default_lora_targets = ("query", "value", "q_proj", "v_proj") if swin else ("conv1", "conv3", "query",
                                                                                          "value")
        self.eval()

    @property
    def logit_scale(self) -> float:
        """exp of the learned log temperature, clamped to [0, ln 100] first as MedCLIP does."""
        return float(self.log_logit_scale.detach().clamp(0, MAX_LOG_SCALE).exp())

    def log_scale_param(self) -> nn.Parameter:
        return self.log_logit_scale

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        vision = [self.vision] + ([self.vision_proj] if self.vision_proj is not None else [])
        return {"vision": vision, "text": [self.bert, self.text_proj]}

    def token_recipe(self) -> TokenizerRecipe:
        return TokenizerRecipe(self.context_length)

    def _pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, self.dtype)
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        if self.swin:
            return self.vision(pixel_values=pixels).pooler_output
        return F.adaptive_avg_pool2d(self.vision(pixels), 1).flatten(1)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        pooled = self._pooled(pixels)
        head: Any = self.vision_proj if self.swin else self.vision.fc  # Swin: a projection; ResNet: its fc layer
        feats = head(pooled)
        return l2_normalize(feats) if normalize else feats

    def text_word_embedding(self) -> torch.nn.Module:
        return self.bert.get_input_embeddings()

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        feats = self.text_proj(self.pooled_text(tokens))
        return l2_normalize(feats) if normalize else feats

    def pooled_text(self, tokens: TextBatch) -> torch.Tensor:
        """``hidden_states[1]``, ``[2]`` and ``[-1]`` averaged over the layers and over every position, padding
        included (the mask enters only the attention), as MedCLIP's and FLAIR's text models pool."""
        out = self.bert(input_ids=tokens["input_ids"].to(self.device),
                        attention_mask=tokens["attention_mask"].to(self.device), output_hidden_states=True)
        hs = out.hidden_states
        return torch.stack([hs[1], hs[2], hs[-1]]).mean(0).mean(1)

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._pooled(pixels)


def _checkpoint(folder: Path) -> Path:
    for name in ("pytorch_model.bin", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
    if len(found) == 1:
        return found[0]
    raise MedvlkitError(f"medclip:{folder}: expected MedCLIP's released pytorch_model.bin there (found "
                        f"{[p.name for p in found] or 'no weights file'})")


def _config_dir(folder: Path, *names: str) -> Path | None:
    return next((folder / n for n in names if (folder / n / "config.json").is_file()), None)


def to_installed_swin(sd: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """A SwinModel state dict in either transformers 4 or 5 names, in the names ``model`` (installed) uses.

    The ``relative_position_index`` buffers of 4.x files are structure, not weights: where the installed SwinModel
    computes them itself they are checked against its own and dropped."""
    target = model.state_dict()
    v5_installed = any(".attention.q_proj." in k for k in target)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(_INDEX_SUFFIX):
            if key in target:
                out[key] = value
                continue
            mod = model.get_submodule(key[: -len(".self.relative_position_index")])
            own = next((b for n, b in mod.named_buffers() if n.endswith("relative_position_index")), None)
            if own is not None and not torch.equal(own.long().cpu().flatten(), value.long().flatten()):
                raise MedvlkitError(f"{key}: the checkpoint's window layout differs from the Swin config's "
                                    "(window_size or image_size)")
            continue
        for v4, v5 in SWIN_V4_TO_V5:
            key = key.replace(v4, v5) if v5_installed else key.replace(v5, v4)
        out[key] = value
    return out


def _swin(sd: dict[str, torch.Tensor], folder: Path):
    from transformers import SwinConfig, SwinModel

    cdir = _config_dir(folder, "vision", "swin")
    config = SwinConfig.from_json_file(str(cdir / "config.json")) if cdir else SwinConfig()  # = swin-tiny 224
    swin = SwinModel(config)
    swin_sd = to_installed_swin({k[len("vision_model.model."):]: v for k, v in sd.items()
                                 if k.startswith("vision_model.model.")}, swin)
    swin.load_state_dict(swin_sd)
    w = sd["vision_model.projection_head.weight"]
    proj = nn.Linear(w.shape[1], w.shape[0], bias=False)
    proj.load_state_dict({"weight": w})
    return swin, proj, config.image_size


def _resnet(sd: dict[str, torch.Tensor]) -> TorchvisionResNet:
    resnet = TorchvisionResNet(50)
    w = sd["vision_model.model.fc.weight"]
    resnet.fc = nn.Linear(w.shape[1], w.shape[0], bias=False)
    resnet.load_state_dict({k[len("vision_model.model."):]: v for k, v in sd.items()
                            if k.startswith("vision_model.model.")})
    return resnet


def _bert(sd: dict[str, torch.Tensor], folder: Path):
    from transformers import BertConfig, BertModel

    cdir = _config_dir(folder, "text", "bert")
    config = BertConfig.from_json_file(str(cdir / "config.json")) if cdir else BertConfig(**BIO_CLINICALBERT)
    bert = BertModel(config, add_pooling_layer=any(k.startswith("text_model.model.pooler.") for k in sd))
    bert_sd = {k[len("text_model.model."):]: v for k, v in sd.items() if k.startswith("text_model.model.")}
    bert_sd.pop("embeddings.position_ids", None)  # written by transformers < 4.31 (MedCLIP-ViT's file has it)
    bert.load_state_dict(bert_sd)
    w = sd["text_model.projection_head.weight"]
    proj = nn.Linear(w.shape[1], w.shape[0], bias=False)
    proj.load_state_dict({"weight": w})
    return bert, proj


def load_medclip(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> MedCLIP:
    """``medclip:DIR``: MedCLIP's released ``pytorch_model.bin`` (either variant) and Bio_ClinicalBERT's tokenizer
    (``vocab.txt`` or ``tokenizer.json``) in ``DIR`` or ``DIR/text``. Configs: ``DIR/text/config.json`` (BERT) and
    ``DIR/vision/config.json`` (Swin) when given, else Bio_ClinicalBERT's and swin-tiny-patch4-window7-224's sizes."""
    from transformers import AutoTokenizer, BertTokenizer

    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise MedvlkitError(f"medclip:{folder}: no such folder; pass the folder holding MedCLIP's pytorch_model.bin")
    weights = _checkpoint(folder)
    sd = read_weights(weights, "expected MedCLIP's released pytorch_model.bin")
    swin = any(k.startswith("vision_model.model.embeddings.patch_embeddings.") for k in sd)
    if not swin and "vision_model.model.conv1.weight" not in sd:
        raise MedvlkitError(f"medclip:{folder}: {weights.name} is not a MedCLIP checkpoint (no vision_model.model.* "
                            "Swin or ResNet-50 weights)")
    try:
        if swin:
            vision, vision_proj, size = _swin(sd, folder)
        else:
            vision, vision_proj, size = _resnet(sd), None, 224
        bert, text_proj = _bert(sd, folder)
        logit_scale = sd["logit_scale"]
    except (KeyError, RuntimeError, ValueError) as err:
        variant = "MedCLIP-ViT (Swin)" if swin else "MedCLIP-ResNet"
        raise MedvlkitError(f"medclip:{folder}: {weights.name} does not match {variant} with the given configs "
                            f"({first_line(err)})") from None
    text_dir = _config_dir(folder, "text", "bert") or folder
    try:
        if (text_dir / "tokenizer.json").is_file() or (text_dir / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
        else:
            # what AutoTokenizer makes of the hub repo (config.json + vocab.txt, no tokenizer_config.json)
            tokenizer = BertTokenizer(str(text_dir / "vocab.txt"))
    except Exception as err:  # noqa: BLE001 - transformers raises many types for missing tokenizer files
        raise MedvlkitError(f"medclip:{folder}: no Bio_ClinicalBERT tokenizer (vocab.txt) in {text_dir} "
                            f"({first_line(err)})") from None
    own = PreprocessCfg(**{**MEDCLIP_PREPROCESS.to_dict(), "image_size": int(size)})
    cfg = preprocess_beside(folder, own) or own  # preprocess.json beside the weights overrides fields
    model = MedCLIP(vision, vision_proj, bert, text_proj, tokenizer, logit_scale, cfg, f"medclip:{ref}",
                    [str(weights)], swin)
    return model.to(device=device, dtype=dtype)
