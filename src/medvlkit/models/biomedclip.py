"""``biomedclip:DIR`` or ``biomedclip:org/name``: BiomedCLIP (or any repository laid out as
``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``) through :mod:`medvlkit.models.hf_text_clip`, which reads
open_clip models with a Hugging Face text tower in medvlkit's own modules."""

from __future__ import annotations

import torch

from medvlkit.models.hf_text_clip import HFTextCLIP, load_hf_text_clip
from medvlkit.models.hub import resolve_folder


def load_biomedclip(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> HFTextCLIP:
    """``biomedclip:DIR``: a folder laid out as the hub repo of BiomedCLIP-PubMedBERT_256-vit_base_patch16_224;
    ``biomedclip:org/name[@revision]``: that repository on the hub (downloaded)."""
    folder, snap = resolve_folder(ref, "biomedclip:")
    model = load_hf_text_clip(folder, "biomedclip:", device, dtype)
    model.name = f"biomedclip:{ref}"
    model.hub_source = snap.record() if snap is not None else None
    return model
