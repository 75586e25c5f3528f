"""UniMed-CLIP (Khattak et al. 2024; github.com/mbzuai-oryx/UniMed-CLIP) from its released training checkpoints
(``unimed_clip_vit_b16.pt``, ``unimed_clip_vit_l14_base_text_encoder.pt``...).

UniMed-CLIP trains with its own fork of open_clip, whose ``CLIP`` is open_clip's ViT (the ``-quickgelu`` configs:
QuickGELU, heads of width 64) and an ``HFTextEncoder`` (``text_encoder.*``: BiomedBERT base or large, the last hidden
state at ``[CLS]``, an ``mlp`` projection), tokenised by ``HFTokenizer`` to 256 tokens with an attention mask of
``ids != pad``. That is the layout :mod:`medvlkit.models.hf_text_clip` reads for open_clip's own hub folders, so this
loader only reads the checkpoint (a ``{"state_dict": ...}`` training file with numpy numbers beside the tensors),
renames ``text_encoder.`` to open_clip's ``text.``, and describes the model the weights' shapes give. Preprocessing:
open_clip's (short side resized, bicubic, centre crop; OpenAI CLIP's mean/std, ``get_mean_std``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import PreprocessCfg
from medvlkit.models.hf_text_clip import HFTextCLIP, bert_tower, open_clip_vision, text_projection
from medvlkit.models.preprocess import preprocess_beside
from medvlkit.models.weight_files import read_weights

CONTEXT_LENGTH = 256  # README: HFTokenizer(text_encoder_name, context_length=256)
TEXT_ENCODER = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"  # its default text tower (a BERT)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    sd = {k.removeprefix("module."): v for k, v in read_weights(path, "is it a UniMed-CLIP checkpoint?").items()}
    if "visual.proj" not in sd or "text_encoder.proj.0.weight" not in sd:
        raise MedvlkitError(f"unimed:{path}: not a UniMed-CLIP checkpoint (no visual.proj and text_encoder.proj in "
                            "its state_dict)")
    sd = {(f"text.{k[len('text_encoder.'):]}" if k.startswith("text_encoder.") else k): v for k, v in sd.items()}
    odd = [k for k in sd if not k.startswith(("visual.", "text.transformer.", "text.proj.")) and k != "logit_scale"]
    if odd:
        raise MedvlkitError(f"unimed:{path}: tensors UniMed-CLIP does not have: {', '.join(odd[:5])}")
    return sd


def load_unimed(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                tokenizer: str | None = None) -> HFTextCLIP:
    """``unimed:FILE``: a released UniMed-CLIP checkpoint; BiomedBERT's tokenizer files (``vocab.txt``, and its
    ``config.json``, else the BERT's shape is read from the weights) in ``--tokenizer DIR``, else in ``text/`` beside
    the file.

    Raises:
        MedvlkitError: a missing file or tokenizer, or a checkpoint that is not UniMed-CLIP's.
    """
    from transformers import AutoTokenizer

    path = Path(ref).expanduser()
    if not path.is_file():
        raise MedvlkitError(f"unimed:{path}: no such file; pass a released UniMed-CLIP checkpoint (.pt)")
    sd = _state_dict(path)
    text_dir = Path(tokenizer).expanduser() if tokenizer else path.parent / "text"
    text_cfg = {"hf_model_name": "." if (text_dir / "config.json").is_file() else TEXT_ENCODER,
                "hf_pooler_type": "cls_last_hidden_state_pooler", "hf_proj_type": "mlp",
                "context_length": CONTEXT_LENGTH}
    embed_dim = int(sd["visual.proj"].shape[1])
    model_cfg = {"embed_dim": embed_dim, "quick_gelu": True, "vision_cfg": {"head_width": 64, "mlp_ratio": 4.0},
                 "text_cfg": text_cfg}
    try:
        trunk, image_proj = open_clip_vision(sd, model_cfg)
        bert = bert_tower(sd, text_dir, text_cfg, False, "unimed:")
        text_proj = text_projection(sd, "mlp", bert.config.hidden_size, embed_dim)
        logit_scale = sd["logit_scale"]
    except (KeyError, RuntimeError, ValueError, IndexError) as err:
        raise MedvlkitError(f"unimed:{path}: the checkpoint does not match UniMed-CLIP's ViT + BERT "
                            f"({first_line(err)})") from None
    try:
        tok = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for missing tokenizer files
        raise MedvlkitError(f"unimed:{path}: no BiomedBERT tokenizer in {text_dir} (hf download {TEXT_ENCODER} "
                            f"vocab.txt config.json tokenizer_config.json --local-dir {text_dir}; the large "
                            f"checkpoints use BiomedBERT-large) ({first_line(err)})") from None
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    cfg = preprocess_beside(path.parent) or PreprocessCfg(image_size=grid * int(sd["visual.conv1.weight"].shape[-1]))
    model = HFTextCLIP(trunk, image_proj, bert, "cls_last_hidden_state_pooler", text_proj, tok, logit_scale,
                       CONTEXT_LENGTH, cfg, f"unimed:{ref}", [str(path)])
    return model.to(device=device, dtype=dtype)
