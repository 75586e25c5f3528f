"""Medical vs non-medical image gate (zero-shot prompts), usable in front of other commands."""

from __future__ import annotations

import numpy as np

from medvlkit.models.base import ModelBase
from medvlkit.prompts import PromptSet, load_prompt_set
from medvlkit.zeroshot import classify

GATE_PROMPTS = "medical_gate"


def default_gate_threshold(model: ModelBase) -> float:
    """The model's own validated threshold where it ships one (``lite``), else 0.5."""
    heads = getattr(model, "heads", None)
    return float(getattr(getattr(heads, "cfg", None), "gate_threshold", 0.5))


def medical_probability(model: ModelBase, image_emb: np.ndarray, prompts: PromptSet | None = None) -> np.ndarray:
    """P(medical image) per row of (N, D) image embeddings, from the ``medical_gate`` prompt set. Returns (N,)."""
    prompts = prompts or load_prompt_set(GATE_PROMPTS)
    probs = classify(model, image_emb, prompts, "softmax")
    return probs[:, prompts.classnames.index("medical")]
