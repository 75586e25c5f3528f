"""Validation of ``lite`` heads during pretraining, on the val part of the corpus only."""

from __future__ import annotations

import numpy as np
import torch

from medvlkit.data.prompts import PromptSet, load_prompt_set
from medvlkit.engine.metrics import auroc_binary
from medvlkit.models.base import l2_normalize
from medvlkit.models.lite import LiteHeads
from medvlkit.tasks.gate import balanced_threshold
from medvlkit.tasks.pretrain.corpus import Pair


def prompt_texts(prompts: PromptSet) -> list[str]:
    return [t for c in prompts.classes for t in prompts.texts(c.positive)]


VAL_PROMPT_SETS = {"pneumonia": ["normal", "pneumonia"], "modality": ["CT", "MR"], "medical_gate": None}


def val_prompt_sets() -> dict[str, PromptSet]:
    out = {}
    for name, classes in VAL_PROMPT_SETS.items():
        ps = load_prompt_set(name)
        out[name] = ps.select(classes) if classes else ps
    return out


@torch.no_grad()
def class_embeddings(heads: LiteHeads, prompts: PromptSet, text_feats: dict[str, np.ndarray]) -> torch.Tensor:
    """(C, D) prompt-ensemble class embeddings through the current text head."""
    rows = []
    for c in prompts.classes:
        f = torch.from_numpy(np.stack([text_feats[t] for t in prompts.texts(c.positive)]))
        rows.append(l2_normalize(l2_normalize(heads.project_text(f)).mean(0)))
    return torch.stack(rows)


@torch.no_grad()
def validate(heads: LiteHeads, pairs: list[Pair], image_feats: np.ndarray,
             text_feats: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics on the val pairs: CXR pneumonia AUROC (prompts), MedPix CT/MR accuracy (prompts), MedPix
    image-to-caption recall@5, gate AUROC (medical vs photo); ``score`` is their mean (the checkpoint criterion)."""
    heads.eval()
    img = l2_normalize(heads.project_image(torch.from_numpy(image_feats)))
    scale = float(heads.log_logit_scale.detach().exp())
    sets = val_prompt_sets()
    src = np.array([p.source for p in pairs])
    out: dict[str, float] = {}

    cxr = np.where(src == "cxr")[0]
    probs = (scale * img[cxr] @ class_embeddings(heads, sets["pneumonia"], text_feats).T).softmax(-1)[:, 1]
    out["cxr_pneumonia_auroc"] = auroc_binary(np.array([pairs[i].meta["label"] == "pneumonia" for i in cxr]),
                                              probs.numpy())

    mp = np.where(src == "medpix")[0]
    pred = (img[mp] @ class_embeddings(heads, sets["modality"], text_feats).T).argmax(-1).numpy()
    truth = np.array([["CT", "MR"].index(pairs[i].meta["type"]) for i in mp])
    out["medpix_ct_mr_accuracy"] = float((pred == truth).mean())

    caps = torch.from_numpy(np.stack([text_feats[pairs[i].captions[0]] for i in mp]))
    sims = img[mp] @ l2_normalize(heads.project_text(caps)).T  # (M, M), diagonal = own caption
    ranks = (sims > sims.diag()[:, None]).sum(1)
    out["medpix_i2t_recall@5"] = float((ranks < 5).float().mean())

    p_med = (scale * img @ class_embeddings(heads, sets["medical_gate"], text_feats).T).softmax(-1)[:, 0].numpy()
    out["gate_auroc"] = auroc_binary(src != "photo", p_med)  # threshold-free: the threshold is chosen afterwards
    out["score"] = float(np.mean(list(out.values())))
    return out


def choose_gate_threshold(heads: LiteHeads, pairs: list[Pair], image_feats: np.ndarray,
                          text_feats: dict[str, np.ndarray]) -> float:
    """The P(medical) threshold with the best balanced accuracy on the val pairs (medical vs photo)."""
    img = l2_normalize(heads.project_image(torch.from_numpy(image_feats)))
    scale = float(heads.log_logit_scale.detach().exp())
    with torch.no_grad():
        p = (scale * img @ class_embeddings(heads, val_prompt_sets()["medical_gate"], text_feats).T).softmax(-1)
    p_med = p[:, 0].numpy()
    return balanced_threshold(p_med, np.array([pr.source != "photo" for pr in pairs]))
