"""Is this image the kind a prompt set describes? A chest X-ray prompt set read on a CT slice still gives
probabilities (Atelectasis 84%, Fracture 83%...), and they mean nothing. A prompt set names its ``domain``
(``chest x-ray``, ``ultrasound``, ``fundus photograph``...; a class of the ``modality`` prompt set); each image is
checked against it with the model's own modality zero-shot (:func:`medvlkit.engine.answer.answer` over the ``modality``
set), and images out of the domain are flagged, never dropped: listed in ``result.json``, marked in
``predictions.csv``, the server's answers and the page.

The decision: P(domain) at or above a threshold chosen on validation images for these very weights (the model's
``validated_domain_thresholds``; ``lite`` ships them, chosen by ``benchmarks/domain_thresholds.py``), or, for a model
without one, the domain being the most probable modality (an argmax, named as such in the record).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvlkit.data.prompts import PromptSet, _norm, load_prompt_set
from medvlkit.engine.answer import ClassVectors, answer, class_vectors
from medvlkit.models.base import ModelBase

DOMAIN_PROMPTS = "modality"


@dataclass
class DomainCheck:
    """Per image: P(the prompt set's domain) and whether it is in the domain.

    Attributes:
        domain: the prompt set's domain (a class of the modality set).
        p_domain: (N,) probability of that modality.
        threshold: the P(domain) threshold, or None for the argmax rule.
        threshold_source: where the decision came from, for the record.
        in_domain: (N,) bool.
    """

    domain: str
    p_domain: np.ndarray
    threshold: float | None
    threshold_source: str
    in_domain: np.ndarray

    def record(self, items: list[str]) -> dict:
        """What ``result.json`` stores: the rule and every image out of the domain with its P(domain)."""
        out = [{"file": it, "p_domain": float(p)} for it, p, ok in zip(items, self.p_domain, self.in_domain)
               if not ok]
        return {"domain": self.domain, "threshold": self.threshold, "threshold_source": self.threshold_source,
                "n_checked": int(len(self.in_domain)), "n_out_of_domain": len(out), "out_of_domain": out}

    def row(self, i: int) -> dict:
        """One image's verdict (the server's answer)."""
        return {"domain": self.domain, "p_domain": float(self.p_domain[i]), "threshold": self.threshold,
                "threshold_source": self.threshold_source, "in_domain": bool(self.in_domain[i])}


def domain_vectors(model: ModelBase, cache: bool = False, cache_dir: str | None = None) -> ClassVectors:
    """The modality set's class vectors, to reuse across checks."""
    return class_vectors(model, load_prompt_set(DOMAIN_PROMPTS), "softmax", cache, cache_dir)


def checkable_domain(prompts: PromptSet) -> str | None:
    """The prompt set's domain when it is a class of the modality set (so it can be checked), else None."""
    if not prompts.domain or prompts.free_text:
        return None
    names = {_norm(c): c for c in load_prompt_set(DOMAIN_PROMPTS).classnames}
    return names.get(_norm(prompts.domain))


def check_domain(model: ModelBase, image_emb: np.ndarray, prompts: PromptSet, vectors: ClassVectors | None = None,
                 threshold: float | None = None) -> DomainCheck | None:
    """Check (N, D) image embeddings against ``prompts``' domain; None when the set names no checkable domain.

    Args:
        vectors: :func:`domain_vectors` already encoded (a server keeps them).
        threshold: a P(domain) threshold to use instead of the model's validated one.
    """
    domain = checkable_domain(prompts)
    if domain is None:
        return None
    vectors = vectors or domain_vectors(model)
    ans = answer(image_emb, vectors, model.logit_scale)
    probs = ans.probs
    col = ans.classnames.index(domain)
    validated = (getattr(model, "validated_domain_thresholds", None) or {}).get(domain)
    if threshold is not None:
        return DomainCheck(domain, probs[:, col], float(threshold), "given", probs[:, col] >= threshold)
    if validated is not None:
        return DomainCheck(domain, probs[:, col], float(validated), f"validated for {model.name}",
                           probs[:, col] >= validated)
    return DomainCheck(domain, probs[:, col], None, f"argmax: no validated threshold for {model.name}",
                       probs.argmax(1) == col)
