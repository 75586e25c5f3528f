"""GLoRIA (Huang et al., ICCV 2021; github.com/marshuang80/gloria) from its released Lightning checkpoints
(``chexpert_resnet50.ckpt``, ``chexpert_resnet18.ckpt``): the GLOBAL image and sentence embeddings.

Architecture as ``gloria/models/vision_model.py`` and ``text_model.py`` (config ``gloria_pretrain_v1.yaml``):

- image: the input is upsampled to 299 x 299 (bilinear, ``align_corners=True``) inside the model, then torchvision's
  ResNet (fc removed), global average pool, ``global_embedder`` (Linear 2048 -> 768; 512 for ResNet-18).
- text: Bio_ClinicalBERT with ``output_hidden_states``; the last 4 hidden states; word pieces summed into words
  (``agg_tokens``), every word up to and including ``[SEP]`` kept, the rest replaced by zero rows; the mean over
  ALL ``word_num`` (97) positions, zero rows included; summed over the 4 layers (``aggregate_method: sum``); no
  projection, no normalisation. Since summing word pieces into words does not change their total, this is the sum
  of the token states from ``[CLS]`` to the first ``[SEP]`` divided by 97, which is how it is computed here.
- texts are cleaned as ``GLoRIA.process_text``: lower-cased, split into ``\\w+`` words (punctuation dropped),
  non-ASCII dropped, numbered items (``1.``) split; tokenised to exactly 97 tokens.
- temperature: GLoRIA's global loss divides cosines by 0.1 (``temp3`` 10): ``logit_scale`` 10, learnable when
  fine-tuning.
- preprocessing (``GLoRIA.process_img``): grey; long side to 256 (cv2 INTER_AREA; PIL's box filter here), padded
  to a 256 square with zeros, centre crop 224, mean/std 0.5.

GLoRIA's own zero-shot also scores local (word-region attention) similarity; medvlkit uses the global embeddings.
The checkpoint's other entries (OmegaConf hyper-parameters, optimiser state) are never executed: see
:func:`~medvlkit.models.torchscript.read_checkpoint_state_dict`.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import LearnedTemperature, ModelBase, PreprocessCfg, TextBatch, l2_normalize
from medvlkit.models.bert_files import bert_tokenizer, text_folder
from medvlkit.models.preprocess import preprocess_beside
from medvlkit.models.torchvision_resnet import TorchvisionResNet, resnet_depth

logger = logging.getLogger(__name__)
GLORIA_PREPROCESS = PreprocessCfg(image_size=224, resize_size=256, mean=(0.5,) * 3, std=(0.5,) * 3,
                                  interpolation="box", resize_mode="pad", grayscale=True)
WORD_NUM = 97  # cfg.data.text.word_num
LAST_N_LAYERS = 4  # cfg.model.text.last_n_layers
TEMPERATURE = 10.0  # cfg.model.gloria.temp3
UPSAMPLE = 299  # ImageEncoder.resnet_forward


def clean_text(text: str) -> str:
    """``GLoRIA.process_text``'s cleaning of one text (before the tokenizer)."""
    sentences = [s for part in re.split(r"[0-9]+\.", text.replace("\n", " ")) for s in part.split(".")]
    out = []
    for s in sentences:
        words = re.findall(r"\w+", s.replace("\ufffd\ufffd", " ").lower())
        words = [w.encode("ascii", "ignore").decode("ascii") for w in words]
        out.append(" ".join(w for w in words if w))
    return " ".join(out)


class GLoRIA(LearnedTemperature, ModelBase):
    """GLoRIA's global embeddings behind the medvlkit surface."""

    def __init__(self, resnet: TorchvisionResNet, image_proj: nn.Linear, bert, tokenizer,
                 preprocess_cfg: PreprocessCfg, name: str, weight_files: list[str]) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.resnet, self.image_proj, self.bert, self.tokenizer, self.name = resnet, image_proj, bert, tokenizer, name
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(TEMPERATURE)))
        self.embed_dim = int(image_proj.out_features)
        self.context_length = WORD_NUM
        self.default_lora_targets = ("conv1", "conv2", "query", "value")
        self.eval()

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.resnet, self.image_proj], "text": [self.bert]}

    def tokenize(self, texts: list[str]) -> TextBatch:
        out = self.tokenizer([clean_text(t) for t in texts], truncation=True, padding="max_length",
                             max_length=WORD_NUM, return_tensors="pt")
        return {k: out[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in out}

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device, self.dtype)
        x = F.interpolate(x, size=(UPSAMPLE, UPSAMPLE), mode="bilinear", align_corners=True)
        return self.resnet(x).mean(dim=(2, 3))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.image_proj(self.image_backbone_features(pixels))
        return l2_normalize(feats) if normalize else feats

    def text_word_embedding(self) -> torch.nn.Module:
        return self.bert.get_input_embeddings()

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        ids = tokens["input_ids"].to(self.device)
        out = self.bert(input_ids=ids, attention_mask=tokens["attention_mask"].to(self.device),
                        token_type_ids=tokens.get("token_type_ids", torch.zeros_like(ids)).to(self.device),
                        output_hidden_states=True)
        states = torch.stack(out.hidden_states[-LAST_N_LAYERS:]).sum(0)  # (B, L, H): the layers' sum
        is_sep = ids == self.tokenizer.sep_token_id
        first_sep = torch.where(is_sep.any(1), is_sep.int().argmax(1), ids.shape[1] - 1)
        keep = torch.arange(ids.shape[1], device=ids.device)[None] <= first_sep[:, None]
        feats = (states * keep[..., None]).sum(1) / ids.shape[1]  # zero rows after [SEP] count in the mean
        return l2_normalize(feats) if normalize else feats


def _bert(sd: dict[str, torch.Tensor], text_dir: Path):
    from transformers import BertConfig, BertModel

    from medvlkit.models.medclip import BIO_CLINICALBERT

    cfg_file = text_dir / "config.json"
    config = BertConfig.from_json_file(str(cfg_file)) if cfg_file.is_file() else BertConfig(**BIO_CLINICALBERT)
    bert = BertModel(config, add_pooling_layer=any(k.startswith("text_encoder.model.pooler.") for k in sd))
    bert_sd = {k[len("text_encoder.model."):]: v for k, v in sd.items() if k.startswith("text_encoder.model.")}
    bert_sd.pop("embeddings.position_ids", None)  # written by transformers < 4.31
    bert.load_state_dict(bert_sd)
    return bert


def load_gloria(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                tokenizer: str | None = None) -> GLoRIA:
    """``gloria:FILE``: a released GLoRIA checkpoint; Bio_ClinicalBERT's ``vocab.txt`` (and optionally
    ``config.json``) in ``--tokenizer DIR``, else in ``text/`` beside the file, else beside the file."""

    from medvlkit.models.torchscript import read_checkpoint_state_dict

    path = Path(ref).expanduser()
    if not path.is_file():
        raise MedvlkitError(f"gloria:{path}: no such file; pass a released GLoRIA checkpoint "
                            "(chexpert_resnet50.ckpt)")
    raw, replaced = read_checkpoint_state_dict(path)
    if replaced:
        logger.info("%s: not executed, kept as inert placeholders: %s", path.name, ", ".join(sorted(replaced)))
    sd = {k.split("gloria.")[-1]: v for k, v in raw.items()}  # gloria.load_gloria's own key fix
    if "img_encoder.global_embedder.weight" not in sd:
        raise MedvlkitError(f"gloria:{path}: not a GLoRIA checkpoint (no gloria.img_encoder.global_embedder in its "
                            "state_dict)")
    text_dir = text_folder(path, tokenizer)
    try:
        resnet = TorchvisionResNet(resnet_depth(sd, "img_encoder.model."))
        resnet.fc = nn.Identity()  # cnn_backbones.resnet_50 replaces fc by Identity
        resnet.load_state_dict({k[len("img_encoder.model."):]: v for k, v in sd.items()
                                if k.startswith("img_encoder.model.")})
        w = sd["img_encoder.global_embedder.weight"]
        image_proj = nn.Linear(w.shape[1], w.shape[0])
        image_proj.load_state_dict({"weight": w, "bias": sd["img_encoder.global_embedder.bias"]})
        bert = _bert(sd, text_dir)
    except (KeyError, RuntimeError, ValueError) as err:
        raise MedvlkitError(f"gloria:{path}: the checkpoint does not match GLoRIA's ResNet + BERT "
                            f"({first_line(err)})") from None
    if bert.config.hidden_size != image_proj.out_features:
        raise MedvlkitError(f"gloria:{path}: text width {bert.config.hidden_size} != image embedding "
                            f"{image_proj.out_features}")
    tok = bert_tokenizer(text_dir, f"gloria:{path}: no Bio_ClinicalBERT tokenizer")
    cfg = preprocess_beside(path.parent, GLORIA_PREPROCESS) or GLORIA_PREPROCESS
    return GLoRIA(resnet, image_proj, bert, tok, cfg, f"gloria:{ref}", [str(path)]).to(device=device, dtype=dtype)
