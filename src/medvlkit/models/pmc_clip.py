"""PMC-CLIP (Lin et al., MICCAI 2023; github.com/WeixiongLin/PMC-CLIP) from its released training checkpoint
(``checkpoint.pt`` in the hub dataset repositories ``axiong/pmc_oa`` and ``axiong/pmc_oa_beta``).

Architecture as ``src/pmc_clip/model/pmc_clip.py`` with ``model_configs/RN50_fusion4.json``:

- image: CLIP's ModifiedResNet-50 with attention pooling to the 768-d embedding (``visual.*``; the same module as
  OpenAI's RN50, :class:`~medvlkit.models.clip_resnet.ModifiedResNet`); 224 px, short side resized (bicubic) and
  centre-cropped, OpenAI CLIP's mean/std (``transform.py``, ``is_train=False``).
- text: PubMedBERT (``text_encoder.*``, a transformers ``BertModel``) run on ids padded to the context length (77;
  the length of the checkpoint's own, otherwise unused, ``positional_embedding``) WITHOUT an attention mask, so
  the padding takes part, as PMC-CLIP calls it; the last hidden state at ``[CLS]`` (PMC-CLIP looks for id 2,
  PubMedBERT's ``[CLS]``, which its tokenizer puts first), times ``text_projection``.
- temperature: the checkpoint's ``logit_scale``.

The checkpoint's other tensors serve PMC-CLIP's masked-language-model objective and never the embeddings: the
fusion transformer (``fusion_module.*``), ``img_special_token``, ``mlm_projection``, the unused ``positional_embedding``
and ``ln_final``, and BERT's pooler. They are left out by name; any other tensor is refused. The file's optimiser
state is never executed (``weights_only`` reading).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import LearnedTemperature, PreprocessCfg, TextBatch, TokenizerRecipe, l2_normalize
from medvlkit.models.bert_files import bert_from_weights, bert_tokenizer, text_folder
from medvlkit.models.clip_resnet import ModifiedResNet, ModifiedResNetImage, infer_resnet_config
from medvlkit.models.preprocess import preprocess_beside
from medvlkit.models.weight_files import read_weights

logger = logging.getLogger(__name__)
CONTEXT_LENGTH = 77  # RN50_fusion4.json text_cfg.context_length, when the checkpoint does not say
# Tensors of the MLM objective (and BERT's unused pooler): in every release, never in the embeddings.
_MLM_ONLY = ("fusion_module.", "img_special_token", "mlm_projection", "positional_embedding", "ln_final.",
             "text_encoder.pooler.", "text_encoder.embeddings.position_ids")


class PMCCLIP(LearnedTemperature, ModifiedResNetImage):
    """PMC-CLIP's contrastive towers (see the module docstring) behind the medvlkit surface."""

    default_lora_targets = ("q_proj", "v_proj", "c_proj", "query", "value")  # attention pool, PubMedBERT attention

    def __init__(self, visual: ModifiedResNet, bert, text_proj: nn.Linear, tokenizer, logit_scale: torch.Tensor,
                 context_length: int, preprocess_cfg: PreprocessCfg, name: str, weight_files: list[str]) -> None:
        super().__init__(preprocess_cfg, weight_files)
        self.visual, self.bert, self.text_proj = visual, bert.eval(), text_proj
        self.tokenizer, self.name, self.context_length = tokenizer, name, context_length
        self.log_logit_scale = nn.Parameter(logit_scale.detach().clone().float().reshape(()))
        self.embed_dim = int(text_proj.out_features)
        self.eval()

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.visual], "text": [self.bert, self.text_proj]}

    def token_recipe(self) -> TokenizerRecipe:
        return TokenizerRecipe(self.context_length, padding="max_length", keys=("input_ids",))

    def text_word_embedding(self) -> torch.nn.Module:
        return self.bert.get_input_embeddings()

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        ids = tokens["input_ids"].to(self.device)
        hidden = self.bert(input_ids=ids).last_hidden_state  # no attention mask: PMC-CLIP attends to the padding
        feats = self.text_proj(hidden[:, 0])
        return l2_normalize(feats) if normalize else feats


def _contrastive_tensors(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The tensors the embeddings use; the MLM-only ones left out by name, anything else refused."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if "text_projection" not in sd or "visual.attnpool.c_proj.weight" not in sd or \
            not any(k.startswith("text_encoder.") for k in sd):
        raise MedvlkitError(f"pmc-clip:{path}: not a PMC-CLIP checkpoint (no visual.attnpool, text_encoder and "
                            "text_projection in its state_dict)")
    kept = {k: v for k, v in sd.items() if not k.startswith(_MLM_ONLY)}
    odd = [k for k in kept if not k.startswith(("visual.", "text_encoder.", "text_projection", "logit_scale"))]
    if odd:
        raise MedvlkitError(f"pmc-clip:{path}: tensors PMC-CLIP does not have: {', '.join(odd[:5])}; is this another "
                            "model's checkpoint?")
    logger.info("%s: left out the %d tensors of PMC-CLIP's masked-language-model objective (fusion module, MLM "
                "projection, BERT pooler); the embeddings do not use them", path.name, len(sd) - len(kept))
    return kept


def load_pmc_clip(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  tokenizer: str | None = None) -> PMCCLIP:
    """``pmc-clip:FILE``: a released PMC-CLIP ``checkpoint.pt``; PubMedBERT's ``vocab.txt`` (and optionally its
    ``config.json``, else the BERT's shape is read from the weights) in ``--tokenizer DIR``, else in ``text/`` beside
    the file, else beside the file.

    Raises:
        MedvlkitError: a missing file, a checkpoint that is not PMC-CLIP's, or no tokenizer.
    """
    path = Path(ref).expanduser()
    if not path.is_file():
        raise MedvlkitError(f"pmc-clip:{path}: no such file; pass PMC-CLIP's released checkpoint.pt")
    raw = read_weights(path, "is it PMC-CLIP's checkpoint.pt?")
    positions = raw.get("module.positional_embedding", raw.get("positional_embedding"))
    context = int(positions.shape[0]) if positions is not None else CONTEXT_LENGTH
    sd = _contrastive_tensors(raw, path)
    text_dir = text_folder(path, tokenizer)
    try:
        arch = infer_resnet_config(sd)
        visual = ModifiedResNet(**arch)
        visual.load_state_dict({k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")})
        bert = bert_from_weights({k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")},
                                 text_dir, with_pooler=False)
        proj = sd["text_projection"]  # (text width, embed): features @ proj
        text_proj = nn.Linear(proj.shape[0], proj.shape[1], bias=False)
        text_proj.load_state_dict({"weight": proj.t().contiguous()})
        logit_scale = sd["logit_scale"]
    except (KeyError, RuntimeError, ValueError, IndexError) as err:
        raise MedvlkitError(f"pmc-clip:{path}: the checkpoint does not match PMC-CLIP's ModifiedResNet + BERT "
                            f"({first_line(err)})") from None
    tok = bert_tokenizer(text_dir, f"pmc-clip:{path}: no PubMedBERT tokenizer")
    cfg = preprocess_beside(path.parent) or PreprocessCfg(image_size=arch["input_resolution"])
    model = PMCCLIP(visual, bert, text_proj, tok, logit_scale, context, cfg, f"pmc-clip:{ref}", [str(path)])
    return model.to(device=device, dtype=dtype)
