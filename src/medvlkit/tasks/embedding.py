"""The ``embed`` task: a dataset's image embeddings written as ``embeddings.npy`` (N, D), ``files.csv`` (row i = the
file of embedding i) and ``result.json`` (counts, images/s, skipped files), on one process or shared out between
torchrun ranks."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from medvlkit.data.dataset import ImageDataset
from medvlkit.engine.distributed import init_world, shutdown
from medvlkit.engine.features import ImageEmbeddings, embed_images
from medvlkit.engine.identity import dataset_identity, identity_record, model_identity
from medvlkit.engine.options import RunOptions
from medvlkit.engine.results import provenance, write_result
from medvlkit.models.base import ModelBase
from medvlkit.tasks.gate import gate_before


def save_embeddings(emb: ImageEmbeddings, out_dir: str | Path, model: ModelBase, dataset: ImageDataset, config: dict,
                    seconds: float, extra: dict | None = None) -> dict:
    """Write ``embeddings.npy`` (N, D), ``files.csv`` (row i = file of embedding i) and ``result.json``.

    Returns:
        the dict written to ``result.json`` (``metrics`` holds throughput and counts).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "embeddings.npy", emb.vectors)
    with open(out_dir / "files.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "file", "label"] + (["text"] if dataset.texts else []))
        for row, (pos, item) in enumerate(zip(emb.indices, emb.items)):
            w.writerow([row, item, dataset.label_text(int(pos))] + ([dataset.texts[pos]] if dataset.texts else []))
    computed = len(emb.items) - emb.n_cached
    metrics = {"n_images": len(emb.items), "n_cached": emb.n_cached, "n_computed": computed,
               "seconds": seconds, "images_per_second": computed / seconds if computed and seconds > 0 else None,
               "embed_dim": int(emb.vectors.shape[1])}
    name = dataset.full_name
    path = write_result(out_dir, dataset=name, model=model.name, task="embed", metrics=metrics, config=config,
                        n_skipped=len(emb.skipped),
                        extra={"skipped": [{"file": f, "reason": r} for f, r in emb.skipped],
                               "preprocess": model.preprocess_cfg.to_dict(),
                               "identity": identity_record("embed", model=model_identity(model),
                                                           data=dataset_identity(dataset))}
                        | provenance(model, dataset, emb) | (extra or {}))
    return json.loads(path.read_text())


def embed_task(model: ModelBase, dataset: ImageDataset, out_dir: Path, config: dict, run=None, gate: bool = False,
               gate_threshold: float | None = None) -> dict | None:
    """The ``embed`` task: (optionally gate, then) embed ``dataset`` and write embeddings.npy, files.csv and
    result.json into ``out_dir``. ``run``: :class:`medvlkit.engine.options.RunOptions`. Returns the result.

    Under ``torchrun`` the images are shared out between the ranks (:func:`embed_images`' ``world``); rank 0 writes
    the merged result in dataset order and the other ranks return None. (``--gate`` runs whole on every rank.)
    """
    kwargs = (run or RunOptions()).embed_kwargs()
    start = time.perf_counter()
    world = init_world(str(model.device))
    dataset, gated, emb = gate_before(model, dataset, gate, gate_threshold, **kwargs)
    emb = emb or embed_images(model, dataset, world=world, **kwargs)
    shutdown()
    if not world.is_main:
        return None
    return save_embeddings(emb, out_dir, model, dataset, config, time.perf_counter() - start,
                           gated | {"world_size": world.size})
