"""Text-conditioned heatmaps: where in an image a dual encoder sees a class prompt.

The explained score of class ``c`` is what zero-shot classification decides on: by default (``log_prob``) the
class's log-probability against the other classes of a softmax prompt set (the scaled cosine similarities of the
image embedding with each class's ensembled prompt embedding, log-softmaxed); ``similarity`` explains the cosine
similarity alone; ``pos_neg`` sets explain the similarity minus the negative prompt's ("X" rather than "no X").
On 200 Kermany test X-rays with ``lite`` (``benchmarks/explain_sanity.py``) ``log_prob`` maps were the more faithful:
insertion AUC 0.072 above random order and deletion 0.007 below (``similarity``: 0.052 above and 0.024 above).

- CNN image towers (``lite``, OpenAI ResNet CLIPs: models with ``image_feature_map``): Grad-CAM (Selvaraju et
  al., ICCV 2017) on the last convolutional stage: channel weights = the spatial mean of the score's gradient,
  map = ReLU of the weighted sum of the channels.
- ViT image towers with a class token (transformers CLIP: ``hf:``, ``openai-ckpt:`` ViTs, ``ft:`` of them):
  gradient-weighted attention rollout (Chefer et al., ICCV 2021, eq. 13-14): per layer
  ``Abar = mean_heads(relu(grad * A))``, ``R = R + Abar @ R`` from ``R = I``, the class token's row over the patches.

- Image-only ViTs (RAD-DINO, DINOv2: no text tower, so no class to explain): attention rollout (Abnar & Zuidema,
  ACL 2020): per layer ``Ahat = 0.5 mean_heads(A) + 0.5 I``, rows renormalised, ``R = Ahat @ R`` from ``R = I``; the
  class token's row over the patches: where the embedding draws from, for every image (``explain`` without
  prompts).

Maps cover the model's input view (the image after its preprocessing's resize and crop or pad, ``S x S``), are
upsampled bilinearly from the feature grid and scaled to [0, 1] by their maximum (all-zero stays zero).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.prompts import PromptSet
from medvlkit.engine.answer import ClassVectors, answer, class_vectors
from medvlkit.engine.identity import dataset_identity, identity_record, model_identity
from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase, l2_normalize
from medvlkit.tasks.domain import check_domain
from medvlkit.tasks.zeroshot import data_classes, prompts_used

METHODS = ("gradcam", "rollout")


@dataclass(frozen=True)
class ClassTargets:
    """What is explained: one vector per class, whose dot product with the unit image embedding is the score."""

    classnames: list[str]
    vectors: np.ndarray  # (C, D)
    mode: str
    target: str = "similarity"  # or "log_prob": log-softmax of the scaled similarities (softmax sets of 2+ classes)
    logit_scale: float = 1.0

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """The explained scores (B, C) of unit image embeddings (B, D)."""
        sims = z @ torch.from_numpy(self.vectors).to(z.device).T
        if self.target == "log_prob" and self.mode == "softmax" and sims.shape[1] > 1:
            return torch.log_softmax(self.logit_scale * sims, dim=1)
        return sims


TARGETS = ("similarity", "log_prob")


def class_targets(model: ModelBase, prompts: PromptSet, mode: str | None = None,
                  target: str = "log_prob") -> ClassTargets:
    """The score vectors of a prompt set: positive ensembles (softmax) or positive minus negative (pos_neg).
    ``target``: explain each class's ``similarity``, or (softmax) its ``log_prob`` against the other classes."""
    return targets_from_vectors(class_vectors(model, prompts, mode, cache=False), model.logit_scale, target)


def targets_from_vectors(cv: ClassVectors, logit_scale: float, target: str = "log_prob") -> ClassTargets:
    """:func:`class_targets` from class vectors already encoded (zero-shot's, a server's), without encoding again."""
    if target not in TARGETS:
        raise MedvlkitError(f"--target {target}: valid options: {', '.join(TARGETS)}")
    vectors = cv.positive if cv.mode == "softmax" else cv.positive - cv.negative
    return ClassTargets(cv.prompts.classnames, vectors.astype(np.float32), cv.mode, target, float(logit_scale))


def method_for(model: ModelBase) -> str:
    """``gradcam`` for CNN towers, ``rollout`` for CLIP ViTs.

    Raises:
        MedvlkitError: a tower neither method applies to.
    """
    if type(model).image_feature_map is not ModelBase.image_feature_map:
        return "gradcam"
    if getattr(model, "model_type", None) == "clip" and hasattr(getattr(model, "model", None), "vision_model"):
        return "rollout"
    raise MedvlkitError(f"no heatmap method for '{model.name}' yet: Grad-CAM needs a CNN image tower (lite, ResNet "
                        "CLIPs), attention rollout a ViT with a class token (CLIP)")


def _finish(maps: torch.Tensor, size: int) -> np.ndarray:
    """(B, h, w) relevance -> (B, size, size) in [0, 1]."""
    maps = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (maps.clamp_min(0) / peak).detach().cpu().numpy().astype(np.float32)


def gradcam(model: ModelBase, pixels: torch.Tensor, targets: ClassTargets,
            classes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (B, C', S, S) for ``classes`` (default all C) and the scores (B, C) for normalised pixels."""
    features = model.image_feature_map(pixels)
    if features is None:
        raise MedvlkitError(f"'{model.name}' has no convolutional feature map for Grad-CAM")
    fmap = features.detach().requires_grad_(True)
    scores = targets.scores(l2_normalize(model.embed_feature_map(fmap).float()))  # (B, C)
    maps = []
    for c in range(scores.shape[1]) if classes is None else classes:
        (grad,) = torch.autograd.grad(scores[:, c].sum(), fmap, retain_graph=True)
        weights = grad.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
        maps.append(_finish(torch.relu((weights * fmap).sum(1)), pixels.shape[-1]))
    return np.stack(maps, 1), scores.detach().cpu().numpy()


@contextlib.contextmanager
def _eager_attention(transformer: Any) -> Iterator[None]:
    """A transformers model on its eager attention kernel for the block (the only one that returns attention
    weights), then back on the kernel it had."""
    before = transformer.config._attn_implementation
    transformer.set_attn_implementation("eager")
    try:
        yield
    finally:
        transformer.set_attn_implementation(before)


def rollout(model: ModelBase, pixels: torch.Tensor, targets: ClassTargets,
            classes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gradient-weighted attention rollout maps (B, C', S, S) for ``classes`` (default all) and the scores (B, C)
    for a CLIP ViT."""
    clip: Any = model.model  # a transformers CLIPModel (checked by heatmap_method)
    with _eager_attention(clip):
        out = clip.vision_model(pixel_values=pixels.to(model.device, model.dtype), output_attentions=True)
        scores = targets.scores(l2_normalize(clip.visual_projection(out.pooler_output).float()))
        attentions = out.attentions  # L x (B, H, T, T)
        tokens = attentions[0].shape[-1]
        grid = int(round((tokens - 1) ** 0.5))
        maps = []
        for c in range(scores.shape[1]) if classes is None else classes:
            grads = torch.autograd.grad(scores[:, c].sum(), attentions, retain_graph=True)
            relevance = rollout_relevance([a.detach().float() for a in attentions], [g.float() for g in grads])
            maps.append(_finish(relevance[:, 0, 1:].reshape(-1, grid, grid), pixels.shape[-1]))
    return np.stack(maps, 1), scores.detach().cpu().numpy()


def rollout_relevance(attentions: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s rollout: ``R = I``; per layer ``R = R + mean_heads(relu(grad * A)) @ R``. Returns (B, T, T)."""
    b, _, t, _ = attentions[0].shape
    relevance = torch.eye(t, device=attentions[0].device).expand(b, t, t).clone()
    for a, g in zip(attentions, grads):
        relevance = relevance + (g * a).clamp_min(0).mean(1) @ relevance
    return relevance


def attention_rollout(model: ModelBase, pixels: torch.Tensor) -> np.ndarray:
    """Attention rollout maps (B, S, S) in [0, 1] of an image-only ViT (``Dinov2Model``) for normalised pixels: where
    its class-token embedding draws from (see the module docstring)."""
    vit: Any = model.model  # a transformers Dinov2Model (image-only models: medvlkit.models.image_only)
    with _eager_attention(vit), torch.no_grad():
        attentions = vit(pixel_values=pixels.to(model.device, model.dtype), output_attentions=True).attentions
    b, _, t, _ = attentions[0].shape
    eye = torch.eye(t, device=attentions[0].device)
    relevance = eye.expand(b, t, t).clone()
    for a in attentions:
        mixed = 0.5 * a.float().mean(1) + 0.5 * eye
        relevance = (mixed / mixed.sum(-1, keepdim=True)) @ relevance
    grid = int(round((t - 1) ** 0.5))
    return _finish(relevance[:, 0, 1:].reshape(-1, grid, grid), pixels.shape[-1])


def heatmaps(model: ModelBase, pixels: torch.Tensor, targets: ClassTargets, method: str | None = None,
             classes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Maps (B, C, S, S) in [0, 1] (or only for the class indices ``classes``) and scores (B, C) for normalised
    pixels, by ``method`` (default :func:`method_for`)."""
    method = method or method_for(model)
    if method not in METHODS:
        raise MedvlkitError(f"--method {method}: valid options: {', '.join(METHODS)}")
    model.eval()
    with torch.enable_grad():
        return (gradcam if method == "gradcam" else rollout)(model, pixels, targets, classes)


def overlay(view: np.ndarray, heat: np.ndarray, alpha: float = 0.45):
    """The model's input view (3, S, S) uint8 with a heatmap (S, S) in [0, 1] over it (jet colours). A PIL image."""
    from matplotlib import colormaps
    from PIL import Image

    colours = colormaps["jet"](heat)[..., :3]
    base = view.transpose(1, 2, 0).astype(np.float32) / 255.0
    return Image.fromarray(np.round(255 * ((1 - alpha) * base + alpha * colours)).astype(np.uint8))


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60] or "x"


def truth_by_class(dataset: ImageDataset, position: int) -> dict[str, int | None] | None:
    """An item's labels keyed by the dataset's own class names (1, 0, None = unknown); None without labels. Truth is
    never attached to prompt classes by position: a prompt class and a dataset class are one only by name."""
    if not dataset.has_labels:
        return None
    return {c: None if np.isnan(v) else int(v) for c, v in zip(dataset.classnames, dataset.label_matrix[position])}


def _save_maps(out_dir: Path, stem: str, view, maps: np.ndarray, classnames: list[str]) -> tuple[str, dict]:
    """Write one image's raw maps (``maps/<stem>.npy``) and an overlay per class; returns (stem, {class: overlay})."""
    np.save(out_dir / "maps" / f"{stem}.npy", maps)
    overlays = {}
    for c, name in enumerate(classnames):
        path = out_dir / "overlays" / f"{stem}__c{c:02d}.png"  # by index: two texts may share a slug
        overlay(view.numpy(), maps[c]).save(path)
        overlays[name] = str(path.relative_to(out_dir))
    return stem, overlays


def explain_attention_task(model: ModelBase, dataset: ImageDataset, out_dir: Path, config: dict,
                           limit: int | None = None, run=None) -> dict:
    """``explain`` for an image-only model: one attention-rollout map per image (:func:`attention_rollout`), as an
    overlay ``overlays/<image>__c00.png`` and ``maps/<image>.npy`` (1, S, S), listed in ``result.json``."""
    from medvlkit.engine.options import RunOptions
    from medvlkit.engine.pixels import view_loader
    from medvlkit.engine.results import provenance, write_result

    run = run or RunOptions()
    if limit:
        dataset = dataset.subset(list(range(min(limit, len(dataset)))))
    start, pre = time.perf_counter(), model.image_preprocessor
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    loader = view_loader(dataset, pre, list(range(len(dataset))), batch_size=1, num_workers=run.workers)
    for positions, views, _ in tqdm(loader, desc="explain", unit="img", total=len(dataset), disable=not run.progress):
        pos, view = positions[0], views[0]
        maps = attention_rollout(model, pre.normalize(view[None]).to(model.device))
        item = dataset.items[pos]
        stem, overlays = _save_maps(out_dir, f"{len(rows):04d}_{_slug(Path(item).stem)}", view, maps, ["attention"])
        rows.append({"file": item, "map": f"maps/{stem}.npy", "overlays": overlays,
                     "truth": truth_by_class(dataset, pos)})
    path = write_result(out_dir, dataset=dataset.name, model=model.name, task="explain", config=config,
                        metrics={"n_images": len(rows), "seconds": time.perf_counter() - start},
                        extra={"method": "attention_rollout", "classes": ["attention"], "images": rows,
                               "view": pre.cfg.describe()} | provenance(model, dataset))
    return json.loads(path.read_text())


def explain_task(model: ModelBase, dataset: ImageDataset, prompts: PromptSet | None, out_dir: Path, config: dict,
                 limit: int | None = None, method: str | None = None, mode: str | None = None,
                 target: str = "log_prob", run=None) -> dict:
    """The ``explain`` task: for each image (the first ``limit``), a heatmap per class of ``prompts``: overlays as
    ``overlays/<image>__c<class index>.png``, raw maps as ``maps/<image>.npy`` (C, S, S), and ``result.json``
    listing files, scores, probabilities (the zero-shot answer, from the same embeddings ``zeroshot`` uses: on
    labelled data over the dataset's classes), truth by dataset class name, and the method. Free texts (``--text``)
    are never matched to the dataset's classes. Images are read by the one pixel path with ``run``'s loader
    workers, cache and ``on_error`` (:class:`medvlkit.engine.options.RunOptions`). An image-only model without
    prompts gets its attention maps instead (:func:`explain_attention_task`). Returns the result."""
    if not model.has_text and prompts is None and method in (None, "attention_rollout"):
        return explain_attention_task(model, dataset, out_dir, config, limit, run)
    if prompts is None:
        raise MedvlkitError("explain needs --prompts, --classes or --text (an image-only model needs none)")
    model.require_text("heatmaps of prompts (without --prompts, explain shows where an image-only model attends)")
    return _explain_prompts(model, dataset, prompts, out_dir, config, limit, method, mode, target, run)


def _explain_prompts(model: ModelBase, dataset: ImageDataset, prompts: PromptSet, out_dir: Path, config: dict,
                     limit: int | None, method: str | None, mode: str | None, target: str, run) -> dict:
    """:func:`explain_task` for a prompt set: a heatmap per class, the zero-shot answer beside it."""
    from medvlkit.engine.features import embed_images
    from medvlkit.engine.options import RunOptions
    from medvlkit.engine.pixels import view_loader
    from medvlkit.engine.results import write_result

    run = run or RunOptions()
    method = method or method_for(model)
    mode = mode or prompts.mode
    restrict = data_classes(dataset, prompts, mode)
    cv = class_vectors(model, prompts, mode, cache=False)
    cv = cv.restrict(restrict) if restrict is not None else cv
    targets = targets_from_vectors(cv, model.logit_scale, target)
    if limit:
        dataset = dataset.subset(list(range(min(limit, len(dataset)))))
    start = time.perf_counter()
    emb = embed_images(model, dataset, **run.embed_kwargs())  # unreadable images: refused or listed, per on_error
    ans = answer(emb.vectors, cv, model.logit_scale)
    domain = check_domain(model, emb.vectors, prompts)  # flagged, not dropped: a map of an out-of-domain image shows it
    row_of = {int(pos): i for i, pos in enumerate(emb.indices)}
    pre = model.image_preprocessor
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    loader = view_loader(dataset, pre, [int(p) for p in emb.indices], batch_size=1, num_workers=run.workers)
    for positions, views, _ in tqdm(loader, desc="explain", unit="img", total=len(emb.indices),
                                    disable=not run.progress):
        pos, view = positions[0], views[0]
        maps, scores = heatmaps(model, pre.normalize(view[None]).to(model.device), targets, method)
        item = dataset.items[pos]
        stem, overlays = _save_maps(out_dir, f"{len(rows):04d}_{_slug(Path(item).stem)}", view, maps[0],
                                    targets.classnames)
        rows.append({"file": item, "map": f"maps/{stem}.npy", "overlays": overlays,
                     "scores": dict(zip(targets.classnames, map(float, scores[0]))),
                     "probabilities": dict(zip(targets.classnames, map(float, ans.probs[row_of[pos]]))),
                     "truth": truth_by_class(dataset, pos),
                     "domain": None if domain is None else domain.row(row_of[pos])})
    skipped = [{"file": f, "reason": r} for f, r in emb.skipped]
    path = write_result(out_dir, dataset=dataset.name, model=model.name, task="explain", config=config,
                        n_skipped=len(skipped),
                        metrics={"n_images": len(rows), "seconds": time.perf_counter() - start},
                        extra={"method": method, "mode": targets.mode, "target": targets.target,
                               "classes": targets.classnames, "prompt_set": prompts.name,
                               "free_text": prompts.free_text, "softmax_over": ans.softmax_over,
                               "dataset_classes": list(dataset.classnames),
                               "view": pre.cfg.describe(), "images": rows, "skipped": skipped,
                               "domain_check": None if domain is None else domain.record(emb.items),
                               "identity": identity_record("explain", model=model_identity(model),
                                                           data=dataset_identity(dataset),
                                                           prompts=prompts_used(dataset, prompts, mode).identity(mode),
                                                           method=method, target=target)})
    return json.loads(path.read_text())
