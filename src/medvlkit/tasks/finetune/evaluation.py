"""Scoring a model while and after it is fine-tuned: the validation score that picks the best epoch, and the
test-split result of the chosen model (written like every other medvlkit result)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.prompts import ClassPrompts, PromptSet
from medvlkit.engine.labels import align_labels
from medvlkit.errors import MedvlkitError
from medvlkit.tasks.caption import class_phrasings, findings_caption


def caption_prompts(dataset: ImageDataset) -> PromptSet:
    """The prompt set matching the template captions of :func:`medvlkit.tasks.finetune.data.caption_pools`: the
    phrasings a contrastive run trained on are the ones it is scored with (single-label softmax; multi-label
    pos/neg)."""
    if dataset.multilabel:
        classes = [ClassPrompts(c, [findings_caption([c])], [findings_caption([])]) for c in dataset.classnames]
        return PromptSet("finetune-captions", classes, mode="pos_neg")
    phrasings = class_phrasings(dataset.classnames)
    return PromptSet("finetune-captions", [ClassPrompts(c, phrasings[c]) for c in dataset.classnames])


@torch.inference_mode()
def head_log_probs(head, emb: np.ndarray, multilabel: bool, device) -> np.ndarray:
    """Classifier log-probabilities (float64) from unnormalised image embeddings. (N, D) -> (N, C)."""
    from medvlkit.engine.scores import check_finite, log_sigmoid, log_softmax

    logits = head(torch.from_numpy(emb).to(device)).double().cpu().numpy()
    check_finite(logits, "classifier outputs")
    return log_sigmoid(logits) if multilabel else log_softmax(logits)


def _macro_auroc(labels: np.ndarray, log_probs: np.ndarray, classnames: list[str], multilabel: bool) -> dict:
    from medvlkit.tasks.evaluate import evaluate_probs

    m = evaluate_probs(labels, None, classnames, multilabel, n_bootstrap=0, log_probs=log_probs).metrics
    return {"auroc": m.get("auroc", m.get("macro_auroc")), "accuracy": m.get("accuracy", m.get("macro_accuracy")),
            "macro_f1": m.get("macro_f1")}


def validation_score(model, dataset: ImageDataset, mode: str, head=None, progress: bool = False,
                     batch_size: int = 64, num_workers: int = 0, prompts: PromptSet | None = None) -> dict:
    """Metrics on validation data and ``score``, the number early stopping maximises.

    - supervised: macro AUROC of the classifier head;
    - contrastive on labelled data: macro AUROC of zero-shot classification with the training phrasings;
    - contrastive on captions: mean of image->text and text->image recall@5;
    - prompt_ce: macro AUROC of zero-shot classification with ``prompts`` (the set it trains over).
    """
    from medvlkit.engine.answer import answer, class_vectors
    from medvlkit.tasks.retrieval import retrieval_metrics

    normalize = mode != "supervised"
    emb = _embed(model, dataset, normalize, batch_size, progress, num_workers=num_workers)
    if mode == "supervised":
        out = _macro_auroc(dataset.label_matrix, head_log_probs(head, emb, dataset.multilabel, model.device),
                           dataset.classnames, dataset.multilabel)
        return out | {"score": out["auroc"]}
    if dataset.texts and mode == "contrastive":
        from medvlkit.engine.features import embed_texts

        m, _ = retrieval_metrics(emb, embed_texts(model, dataset.texts), dataset.texts, n_bootstrap=0)
        r5 = 0.5 * (m["image_to_text_recall@5"] + m["text_to_image_recall@5"])
        return {k: m[k] for k in ("image_to_text_recall@5", "text_to_image_recall@5")} | {"score": r5}
    prompts = prompts or caption_prompts(dataset)
    log_probs = answer(emb, class_vectors(model, prompts), model.logit_scale).log_probs
    out = _macro_auroc(dataset.label_matrix, log_probs, dataset.classnames, dataset.multilabel)
    return out | {"score": out["auroc"]}


def _embed(model, dataset: ImageDataset, normalize: bool, batch_size: int, progress: bool,
           num_workers: int = 0) -> np.ndarray:
    """Embeddings of every image in dataset order, by the one embedding loop with the cache off (the weights
    change between calls); an unreadable image is an error."""
    from medvlkit.engine.features import embed_images

    # a DataLoader draws its base seed from the global RNG; validating must not move a training run's dropout masks
    with torch.random.fork_rng(devices=[]):
        return embed_images(model, dataset, batch_size=batch_size, num_workers=num_workers, cache=False,
                            progress=progress, normalize=normalize).vectors


def evaluate_finetuned(model, dataset: ImageDataset, out_dir: Path, config: dict, n_bootstrap: int = 1000,
                       seed: int = 0, prompts: PromptSet | None = None, **embed_options) -> dict:
    """Score a fine-tuned model (``ft:DIR``) on a test split and write result.json (+ predictions.csv).

    A supervised run is scored by its classifier head; a contrastive run by zero-shot classification with its
    training phrasings (labelled data) or by retrieval (captioned data); a ``prompt_ce`` run by zero-shot
    classification with ``prompts`` (the set it trained over).
    """
    from medvlkit.engine.results import DEFAULT_THRESHOLD_SOURCE, provenance, write_predictions, write_result
    from medvlkit.tasks.evaluate import evaluate_probs

    out_dir.mkdir(parents=True, exist_ok=True)
    name = dataset.full_name
    if getattr(model, "classifier", None) is not None:
        if not dataset.has_labels:
            raise MedvlkitError(f"dataset '{dataset.name}' has no labels to score the classifier head on")
        multilabel = bool(getattr(model, "multilabel", dataset.multilabel))
        aligned = align_labels(dataset.label_matrix, dataset.classnames, list(model.classnames), multilabel)
        dataset = dataset.subset(np.flatnonzero(aligned.keep))
        emb = _embed(model, dataset, False, embed_options.get("batch_size", 64), embed_options.get("progress", True),
                     embed_options.get("num_workers", 0))
        log_probs = head_log_probs(model.classifier, emb, multilabel, model.device)
        ev = evaluate_probs(aligned.labels, None, model.classnames, multilabel, n_bootstrap, seed, log_probs=log_probs)
        write_predictions(out_dir, dataset.items, model.classnames, log_probs, aligned.labels, multilabel)
        path = write_result(out_dir, dataset=name, model=model.name, task="finetune_classification",
                            metrics=ev.metrics, ci=ev.ci, config=config, seed=seed,
                            extra={"classnames": model.classnames, "confusion_matrix": ev.confusion_matrix,
                                   "mode": "pos_neg" if multilabel else "softmax",
                                   "label_alignment": aligned.record()} | ev.extra
                            | provenance(model, dataset, threshold_source=DEFAULT_THRESHOLD_SOURCE))
        return json.loads(path.read_text())
    if dataset.has_labels and not dataset.texts:
        from medvlkit.tasks.zeroshot import save_zeroshot, zeroshot_classify

        result = zeroshot_classify(model, dataset, prompts or caption_prompts(dataset), **embed_options)
        return save_zeroshot(result, dataset, model, out_dir, config, n_bootstrap, seed, embed_options=embed_options)
    from medvlkit.tasks.retrieval import save_retrieval

    return save_retrieval(model, dataset, out_dir, config, n_bootstrap, seed, **embed_options)
