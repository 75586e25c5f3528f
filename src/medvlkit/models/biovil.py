"""BioViL (Boecking et al. 2022, hi-ml-multimodal) from its released files, without torchvision.

- image (``biovil_image_resnet50_proj_size_128.pt``, keys ``encoder.encoder.*`` and ``projector.model.*``):
  torchvision's ResNet-50 up to layer4, written here in plain torch with torchvision's parameter names; the projector
  (1x1 conv 2048->128, BatchNorm, ReLU, 1x1 conv 128->128) runs on every spatial position and its output is averaged
  over H and W (projecting first, then averaging: BN + ReLU make the order matter).
- text (CXR-BERT, ``model_type`` "cxr-bert"): transformers' ``BertModel`` on ``[CLS] ... [SEP]`` with prompts' trailing
  ``!?.`` stripped, ``last_hidden_state[:, 0]`` -> ``cls_projection_head`` (Linear, exact GELU, LayerNorm eps 1e-12,
  Linear).
- no learned temperature: BioViL scores by cosine similarity, so ``logit_scale`` is 1.0 (softmax over cosines).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import ModelBase, PreprocessCfg, TextBatch, TokenizerRecipe, l2_normalize
from medvlkit.models.preprocess import preprocess_beside
from medvlkit.models.torchvision_resnet import TorchvisionResNet
from medvlkit.models.weight_files import read_weights

# hi-ml-multimodal's inference transform: Resize(512), CenterCrop(480), ToTensor, 3 equal channels; no mean/std.
BIOVIL_PREPROCESS = PreprocessCfg(image_size=480, resize_size=512, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                  interpolation="bilinear", resize_mode="shortest")


def TorchvisionResNet50() -> TorchvisionResNet:  # noqa: N802 - reads like the class it builds
    """torchvision.models.resnet50 (``fc`` kept so its state dict loads strictly). (B,3,S,S) -> (B,2048,h,w)."""
    return TorchvisionResNet(50)


class BioViL(ModelBase):
    """BioViL behind the medvlkit surface."""

    default_lora_targets = ("conv1", "conv3", "query", "value")  # ResNet 1x1 convs (and stem), CXR-BERT attention
    logit_scale = 1.0

    def __init__(self, resnet: TorchvisionResNet, projector: nn.Sequential, bert, text_head: nn.Sequential,
                 tokenizer, preprocess_cfg: PreprocessCfg, name: str, weight_files: list[str]) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.resnet, self.projector, self.bert, self.text_head = resnet, projector, bert, text_head
        self.tokenizer, self.name = tokenizer, name
        last: Any = text_head[-1]
        self.embed_dim = int(last.out_features)
        self.context_length = int(bert.config.max_position_embeddings)
        self.eval()

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.resnet, self.projector], "text": [self.bert, self.text_head]}

    def token_recipe(self) -> TokenizerRecipe:
        return TokenizerRecipe(self.context_length, text_rule="biovil")  # TextInput.tokenize_input_prompts

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.projector(self.resnet(pixels.to(self.device, self.dtype))).mean(dim=(2, 3))
        return l2_normalize(feats) if normalize else feats

    def text_word_embedding(self) -> torch.nn.Module:
        return self.bert.get_input_embeddings()

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        feats = self.text_head(self.bert(**tokens).last_hidden_state[:, 0])
        return l2_normalize(feats) if normalize else feats

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.resnet(pixels.to(self.device, self.dtype)).mean(dim=(2, 3))

    def log_scale_param(self) -> nn.Parameter:
        raise MedvlkitError("BioViL has no learned temperature: contrastive fine-tuning is not wired for it; use "
                            "--mode supervised or a probe")


def _image_tower(folder: Path) -> tuple[TorchvisionResNet, nn.Sequential, Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".safetensors") and "resnet" in p.name)
    if not files:
        raise MedvlkitError(f"biovil:{folder}: no image checkpoint (biovil_image_resnet50_proj_size_128.pt) there")
    sd = read_weights(files[0], "expected BioViL's released image weights")
    resnet = TorchvisionResNet50()
    dim = sd.get("projector.model.0.weight", torch.zeros(128, 2048, 1, 1)).shape[0]
    projector = nn.Sequential(nn.Conv2d(2048, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(),
                              nn.Conv2d(dim, dim, 1))
    try:
        resnet.load_state_dict({k[len("encoder.encoder."):]: v for k, v in sd.items()
                                if k.startswith("encoder.encoder.")})
        projector.load_state_dict({k[len("projector.model."):]: v for k, v in sd.items()
                                   if k.startswith("projector.model.")})
    except RuntimeError as err:
        raise MedvlkitError(f"biovil:{folder}: {files[0].name} is not BioViL's ResNet-50 image model "
                            f"({first_line(err)})") from None
    return resnet, projector, files[0]


def _text_tower(folder: Path) -> tuple[object, nn.Sequential, object, Path]:
    from transformers import AutoTokenizer, BertConfig, BertModel

    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MedvlkitError(f"biovil:{folder}: no readable CXR-BERT config.json ({first_line(err)})") from None
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise MedvlkitError(f"biovil:{folder}: no CXR-BERT weights (model.safetensors or pytorch_model.bin)")
    sd = read_weights(weights, "expected CXR-BERT's released weights")
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "transformers_version",
                                                        "auto_map", "projection_size")}
    bert = BertModel(BertConfig(**fields), add_pooling_layer=False)
    proj, hidden = int(raw.get("projection_size", 128)), bert.config.hidden_size
    head = nn.Sequential(nn.Linear(hidden, proj), nn.GELU(), nn.LayerNorm(proj, eps=1e-12), nn.Linear(proj, proj))
    bert_sd = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.") and "pooler" not in k}
    bert_sd.pop("embeddings.position_ids", None)  # transformers < 4.31 wrote it
    if raw.get("tie_word_embeddings", True) and "cls.predictions.decoder.weight" in sd:
        # CXRBertModel is a BertForMaskedLM whose decoder shares the word embeddings: the tied tensor is the decoder's
        bert_sd["embeddings.word_embeddings.weight"] = sd["cls.predictions.decoder.weight"]
    names = {"dense_to_hidden": "0", "LayerNorm": "2", "dense_to_output": "3"}
    head_sd = {f"{names[k.split('.')[1]]}.{k.split('.')[2]}": v for k, v in sd.items()
               if k.startswith("cls_projection_head.")}
    try:
        bert.load_state_dict(bert_sd)
        head.load_state_dict(head_sd)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - torch and transformers raise many types
        raise MedvlkitError(f"biovil:{folder}: {weights.name} is not a CXR-BERT with its projection head, or the "
                            f"tokenizer files are missing ({first_line(err)})") from None
    return bert, head, tokenizer, weights


def load_biovil(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> BioViL:
    """``biovil:DIR``: the image checkpoint and the CXR-BERT files (config, weights, tokenizer) in one folder, or the
    text files in ``DIR/cxr_bert``; ``biovil:org/name[@revision]``: that folder on the hub (downloaded)."""
    from medvlkit.models.hub import resolve_folder

    folder, snap = resolve_folder(ref, "biovil:")
    resnet, projector, image_file = _image_tower(folder)
    text_dir = folder / "cxr_bert" if (folder / "cxr_bert" / "config.json").is_file() else folder
    bert, head, tokenizer, text_file = _text_tower(text_dir)
    cfg = preprocess_beside(folder) or BIOVIL_PREPROCESS
    model = BioViL(resnet, projector, bert, head, tokenizer, cfg, f"biovil:{ref}", [str(image_file), str(text_file)])
    model.hub_source = snap.record() if snap is not None else None
    return model.to(device=device, dtype=dtype)
