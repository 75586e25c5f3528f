"""BMC-CLIP / BMCA-CLIP (Lozano et al., CVPR 2025; BIOMEDICA) from its release ``BMC_CLIP_CF.pt`` (hub repository
``BIOMEDICA/BMC_CLIP_CF``, MIT): an open_clip training checkpoint (``{"state_dict": {"module.<key>"...}}``) of
open_clip's ``ViT-L-14`` config, as the BIOMEDICA authors load it into ``create_model_and_transforms("ViT-L-14")``.

What the weights do not say comes from that config (exact GELU, not QuickGELU; text heads 12; vision heads of width
64); widths, depths and sizes are read from the weights, and the model is built by the ``open_clip:`` reader of
open_clip's standard ViT CLIP. Preprocessing: open_clip's for that config (224 px, short side resized, bicubic,
centre crop, OpenAI CLIP's mean/std); the tokenizer: OpenAI CLIP's BPE, which medvlkit ships.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase, PreprocessCfg
from medvlkit.models.hub import resolve_folder
from medvlkit.models.open_clip import open_clip_vit
from medvlkit.models.preprocess import preprocess_beside
from medvlkit.models.weight_files import read_weights

RELEASE_FILE = "BMC_CLIP_CF.pt"
# open_clip's model_configs/ViT-L-14.json, the options the weights do not carry
VIT_L_14 = {"embed_dim": 768, "vision_cfg": {"head_width": 64, "mlp_ratio": 4.0},
            "text_cfg": {"heads": 12, "mlp_ratio": 4.0}}


def _checkpoint(ref: str) -> tuple[Path, dict | None]:
    path = Path(ref).expanduser()
    if path.is_file():
        return path, None
    folder, snap = resolve_folder(ref, "bmc:")
    found = folder / RELEASE_FILE if (folder / RELEASE_FILE).is_file() else None
    if found is None:
        files = sorted(folder.glob("*.pt"))
        if len(files) != 1:
            raise MedvlkitError(f"bmc:{ref}: expected {RELEASE_FILE} there (found {[f.name for f in files]})")
        found = files[0]
    return found, snap.record() if snap is not None else None


def load_bmc(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
             tokenizer: str | None = None) -> ModelBase:
    """``bmc:FILE`` (``BMC_CLIP_CF.pt``), ``bmc:DIR`` (a folder holding it) or ``bmc:org/name[@revision]`` (the hub
    repository, downloaded).

    Raises:
        MedvlkitError: a missing file, or a checkpoint that is not an open_clip ViT CLIP.
    """
    path, source = _checkpoint(ref)
    sd = {k.removeprefix("module."): v for k, v in read_weights(path, "is it BMC_CLIP_CF.pt?").items()}
    if "visual.proj" not in sd or "text_projection" not in sd:
        raise MedvlkitError(f"bmc:{path}: not an open_clip ViT CLIP checkpoint (no visual.proj and text_projection)")
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    pre = preprocess_beside(path.parent) or PreprocessCfg(image_size=grid * int(sd["visual.conv1.weight"].shape[-1]))
    model = open_clip_vit(sd, VIT_L_14, pre, path, f"bmc:{ref}", tokenizer, device, dtype)
    model.hub_source = source
    return model
