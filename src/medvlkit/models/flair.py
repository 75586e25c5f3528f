"""FLAIR (Silva-Rodriguez et al., Medical Image Analysis 2025; github.com/jusiro/FLAIR, Apache-2.0) from its released
``flair_resnet.pth``: a foundation model for colour fundus photographs.

Architecture as ``flair/modeling/model.py`` (``FLAIRModel`` with its defaults: ``resnet_v1``, ``proj_dim`` 512, no
projection bias, ``projection`` and ``norm_features`` on). FLAIR grew out of MedCLIP's code and shares its text
pooling, so it is MedCLIP's ResNet variant with FLAIR's projection layers:

- image: torchvision's ResNet-50 (``vision_model.model.*``, ``fc`` = Identity: the global average pool), then
  ``ProjectionLayer``: L2-normalise, Linear 2048 -> 512, L2-normalise (``vision_model.projection_head_vision``).
- text: Bio_ClinicalBERT (``text_model.model.*``): ``hidden_states[1]``, ``[2]`` and ``[-1]`` averaged over the
  layers and over every position, padding included; texts padded to the longest of the call, at most 77 tokens;
  then the same ``ProjectionLayer`` (768 -> 512).
- ``logit_scale``: ``exp(clamp(logit_scale, 0, ln 100))`` as ``FLAIRModel.compute_logits``.
- preprocessing (``ImageScaling`` / ``FLAIRModel.preprocess_image``): pixels scaled to [0, 1] with no mean/std, the
  long side resized to 512 (sizes truncated), padded with black on the right and bottom to 512 x 512.

FLAIR's zero-shot wraps each class in "A fundus photograph of [CLS]" and, with its expert knowledge, replaces the
class by the descriptions of its dictionary (``flair/modeling/dictionary.py``): medvlkit ships those as the prompt
sets ``flair_fundus`` and ``flair_dr_grading``. One difference: FLAIR tokenises each class's descriptions as one
batch, so their padding (which enters the pooling) depends on that class's longest description; medvlkit pads all
prompts of a call together, as for MedCLIP.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import PreprocessCfg, TextBatch, l2_normalize
from medvlkit.models.bert_files import bert_from_weights, bert_tokenizer, text_folder
from medvlkit.models.medclip import MedCLIP
from medvlkit.models.preprocess import preprocess_beside
from medvlkit.models.torchvision_resnet import TorchvisionResNet, resnet_depth
from medvlkit.models.weight_files import read_weights

FLAIR_PREPROCESS = PreprocessCfg(image_size=512, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear",
                                 resize_mode="canvas")
_VISION, _TEXT = "vision_model.model.", "text_model.model."
_VISION_PROJ = "vision_model.projection_head_vision.projection."
_TEXT_PROJ = "text_model.projection_head_text.projection."


class FLAIR(MedCLIP):
    """FLAIR behind the medvlkit surface: MedCLIP's ResNet variant with FLAIR's normalise-project-normalise layers."""

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        assert self.vision_proj is not None
        return l2_normalize(self.vision_proj(l2_normalize(self._pooled(pixels))))  # FLAIR's own output is unit

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        return l2_normalize(self.text_proj(l2_normalize(self.pooled_text(tokens))))


def _linear(sd: dict[str, torch.Tensor], prefix: str) -> nn.Linear:
    w = sd[prefix + "weight"]
    layer = nn.Linear(w.shape[1], w.shape[0], bias=prefix + "bias" in sd)
    layer.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    return layer


def load_flair(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
               tokenizer: str | None = None) -> FLAIR:
    """``flair:FILE``: FLAIR's released ``flair_resnet.pth``; Bio_ClinicalBERT's ``vocab.txt`` (and optionally its
    ``config.json``; else the BERT's shape is read from the weights) in ``--tokenizer DIR``, else in ``text/`` beside
    the file, else beside the file.

    Raises:
        MedvlkitError: a missing file, a checkpoint that is not FLAIR's, or no tokenizer.
    """
    path = Path(ref).expanduser()
    if not path.is_file():
        raise MedvlkitError(f"flair:{path}: no such file; pass FLAIR's released flair_resnet.pth")
    sd = {k.removeprefix("module."): v for k, v in read_weights(path, "is it FLAIR's flair_resnet.pth?").items()}
    if _VISION_PROJ + "weight" not in sd or _TEXT_PROJ + "weight" not in sd:
        raise MedvlkitError(f"flair:{path}: not a FLAIR checkpoint (no vision_model.projection_head_vision and "
                            "text_model.projection_head_text in it)")
    odd = [k for k in sd if not k.startswith((_VISION, _TEXT, _VISION_PROJ, _TEXT_PROJ)) and k != "logit_scale"]
    if odd:
        raise MedvlkitError(f"flair:{path}: tensors FLAIR does not have: {', '.join(odd[:5])}; is this another "
                            "model's checkpoint?")
    text_dir = text_folder(path, tokenizer)
    try:
        resnet = TorchvisionResNet(resnet_depth(sd, _VISION))
        resnet.fc = nn.Identity()  # FLAIR's VisionModel replaces the classifier by Identity
        resnet.load_state_dict({k[len(_VISION):]: v for k, v in sd.items() if k.startswith(_VISION)})
        vision_proj, text_proj = _linear(sd, _VISION_PROJ), _linear(sd, _TEXT_PROJ)
        bert = bert_from_weights({k[len(_TEXT):]: v for k, v in sd.items() if k.startswith(_TEXT)}, text_dir)
        logit_scale = sd["logit_scale"]
    except (KeyError, RuntimeError, ValueError) as err:
        raise MedvlkitError(f"flair:{path}: the checkpoint does not match FLAIR's ResNet + BERT "
                            f"({first_line(err)})") from None
    tok = bert_tokenizer(text_dir, f"flair:{path}: no Bio_ClinicalBERT tokenizer")
    cfg = preprocess_beside(path.parent, FLAIR_PREPROCESS) or FLAIR_PREPROCESS
    model = FLAIR(resnet, vision_proj, bert, text_proj, tok, logit_scale, cfg, f"flair:{ref}", [str(path)],
                  swin=False)
    return model.to(device=device, dtype=dtype)
