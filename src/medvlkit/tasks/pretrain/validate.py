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


SET_PROMPTS = {"brain_tumor_mri": "brain_tumor_mri", "busi_breast_ultrasound": "busi",
               "lung_histopathology_lc25000": "lung_histopathology", "fundus_eye_diseases": "fundus_eye_diseases",
               "cxr_covid_radiography_adult": "covid_adult_cxr"}
"""The prompt set each v2 source is validated with (its class names are the set's labels)."""
VAL_PROMPT_SETS = {"pneumonia": ["normal", "pneumonia"], "modality": ["CT", "MR"], "medical_gate": None} | {
    prompts: None for prompts in SET_PROMPTS.values()}


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
    image-to-caption recall@5, gate AUROC (medical vs photo) and, for each v2 source present, the macro AUROC of its
    prompt set (:data:`SET_PROMPTS`); ``score`` is their mean (the checkpoint criterion)."""
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

    for name, prompt_set in SET_PROMPTS.items():  # v2's sources: macro one-vs-rest AUROC of the prompt softmax
        rows = np.where(src == name)[0]
        if not len(rows):
            continue
        ps = sets[prompt_set]
        set_probs = (scale * img[rows] @ class_embeddings(heads, ps, text_feats).T).softmax(-1).numpy()
        truth = np.array([ps.classnames.index(pairs[i].meta["label"]) for i in rows])
        out[f"{name}_macro_auroc"] = float(np.mean([auroc_binary(truth == c, set_probs[:, c])
                                                    for c in range(len(ps.classnames))]))
    out["score"] = float(np.mean(list(out.values())))
    return out


GATE_KEEP = 0.995
"""The share of each medical source's validation images the gate's threshold must keep."""


def choose_gate_threshold(heads: LiteHeads, pairs: list[Pair], image_feats: np.ndarray,
                          text_feats: dict[str, np.ndarray]) -> float:
    """The P(medical) threshold of the gate, from the val pairs: the highest at which every medical source keeps
    :data:`GATE_KEEP` of its images (a gate must not drop one modality's images; lite v1 used the best balanced
    accuracy, which in v2 sat inside PneumoniaMNIST's lower tail: 98.6% of its test images kept), and never above
    the balanced-accuracy threshold."""
    img = l2_normalize(heads.project_image(torch.from_numpy(image_feats)))
    scale = float(heads.log_logit_scale.detach().exp())
    with torch.no_grad():
        p = (scale * img @ class_embeddings(heads, val_prompt_sets()["medical_gate"], text_feats).T).softmax(-1)
    p_med = p[:, 0].numpy()
    source = np.array([pr.source for pr in pairs])
    keep = min(float(np.quantile(p_med[source == s], 1 - GATE_KEEP, method="lower"))
               for s in sorted(set(source) - {"photo"}))
    return min(keep, balanced_threshold(p_med, source != "photo"))
