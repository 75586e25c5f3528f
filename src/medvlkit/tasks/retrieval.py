"""Image-text retrieval metrics: recall@K, mean and median rank, with bootstrap CIs over queries.

A query's relevant items are every gallery item whose caption text equals its own caption (MedPix, for one,
gives several images of a case the same caption), so duplicates are never counted as misses. Ties count against
the query: an irrelevant item scored equal to the best relevant one ranks above it, so a collapsed tower (every
embedding equal) scores recall@1 = 0, never 1.
"""

from __future__ import annotations

import numpy as np

from medvlkit.engine.metrics import bootstrap_ci
from medvlkit.engine.scores import check_finite

KS = (1, 5, 10)


def first_relevant_ranks(sims: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of the best-scored relevant gallery item per query (ties ranked against the query).

    Args:
        sims: (Q, G) similarities.
        relevant: (Q, G) bool, True where the gallery item is a correct answer.
    """
    best = np.where(relevant, sims, -np.inf).max(axis=1, keepdims=True)  # (Q, 1)
    return 1 + ((sims >= best) & ~relevant).sum(axis=1)


def rank_metrics(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """recall@1/5/10, mean rank and median rank of 1-based ranks."""
    out = {f"{prefix}_recall@{k}": float(np.mean(ranks <= k)) for k in KS}
    out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    return out


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, captions: list[str], n_bootstrap: int = 1000,
                      seed: int = 0) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Image->text and text->image retrieval over N image-caption pairs.

    Args:
        image_emb: (N, D) unit image embeddings; text_emb: (N, D) unit embeddings of their captions.
        captions: the N caption strings (identical strings are all relevant to each other).

    Returns:
        (metrics, 95% CIs): ``image_to_text_recall@5``, ``text_to_image_median_rank``, ...
    """
    check_finite(image_emb, "image embeddings")
    check_finite(text_emb, "text embeddings")
    sims = image_emb @ text_emb.T  # (N, N): image i vs caption j
    caps = np.asarray(captions)
    relevant = caps[:, None] == caps[None, :]
    i2t = first_relevant_ranks(sims, relevant)
    t2i = first_relevant_ranks(sims.T, relevant.T)
    metrics = rank_metrics(i2t, "image_to_text") | rank_metrics(t2i, "text_to_image")
    metrics["n"] = len(captions)

    def fn(a, b):
        return rank_metrics(a, "image_to_text") | rank_metrics(b, "text_to_image")

    ci = bootstrap_ci(fn, (i2t, t2i), n_bootstrap, seed) if n_bootstrap else {}
    return metrics, ci


def evaluate_retrieval(model, dataset, n_bootstrap: int = 1000, seed: int = 0, **embed_options):
    """Embed an image-caption dataset and score retrieval both ways.

    Returns:
        (metrics, ci, embeddings, examples): embeddings is the :class:`~medvlkit.engine.features.ImageEmbeddings`,
        examples a few text queries with their top images (:func:`text_to_image_examples`).
    """
    from medvlkit.engine.features import embed_images, embed_texts
    from medvlkit.errors import MedvlkitError

    if not dataset.texts:
        raise MedvlkitError(f"dataset '{dataset.name}' has no captions; retrieval needs image-caption data "
                            "(JSONL/CSV with a caption column, or MedPix-2.0)")
    emb = embed_images(model, dataset, **embed_options)
    captions = [dataset.texts[i] for i in emb.indices]
    text_emb = embed_texts(model, captions, progress=bool(embed_options.get("progress", False)))
    metrics, ci = retrieval_metrics(emb.vectors, text_emb, captions, n_bootstrap, seed)
    return metrics, ci, emb, text_to_image_examples(emb.vectors, text_emb, captions, emb.items)


def retrieval_identity(model, dataset, n_bootstrap: int, seed: int, embed_options: dict) -> dict:
    """What a retrieval result is computed from (see :mod:`medvlkit.engine.identity`)."""
    from medvlkit.engine.identity import dataset_identity, identity_record, model_identity, result_options

    return identity_record("zeroshot_retrieval", model=model_identity(model), data=dataset_identity(dataset),
                           bootstrap=n_bootstrap, seed=seed, options=result_options(embed_options))


def save_retrieval(model, dataset, out_dir, config: dict, n_bootstrap: int = 1000, seed: int = 0,
                   **embed_options) -> dict:
    """Score retrieval both ways on an image-caption dataset and write ``out_dir/result.json`` (the one writer of
    retrieval results: ``retrieve``, ``finetune`` and ``benchmark`` all use it). Returns what was written."""
    import json
    from pathlib import Path

    from medvlkit.engine.results import provenance, write_result

    model.require_text("image-text retrieval")
    metrics, ci, emb, examples = evaluate_retrieval(model, dataset, n_bootstrap, seed, **embed_options)
    name = dataset.full_name
    path = write_result(Path(out_dir), dataset=name, model=model.name, task="zeroshot_retrieval", metrics=metrics,
                        ci=ci, config=config, seed=seed, n_skipped=len(emb.skipped),
                        extra={"skipped": [{"file": f, "reason": r} for f, r in emb.skipped], "examples": examples,
                               "identity": retrieval_identity(model, dataset, n_bootstrap, seed, embed_options)}
                        | provenance(model, dataset, emb))
    return json.loads(path.read_text())


def text_to_image_examples(image_emb: np.ndarray, text_emb: np.ndarray, captions: list[str], items: list[str],
                           n_queries: int = 6, k: int = 5) -> list[dict]:
    """The first ``n_queries`` distinct captions with their top-k images and the rank of the right image (for
    the report's retrieval grid)."""
    firsts = list(dict.fromkeys(captions))[:n_queries]
    out = []
    for caption in firsts:
        q = captions.index(caption)
        sims = image_emb @ text_emb[q]  # (N,)
        order = np.argsort(-sims)
        relevant = np.array([c == caption for c in captions])
        rank = int(np.argmax(relevant[order])) + 1
        out.append({"query": caption, "answer": items[q], "answer_rank": rank,
                    "top": [{"file": items[j], "score": float(sims[j]), "correct": bool(relevant[j])}
                            for j in order[:k]]})
    return out
