"""Similar-case search: a FAISS index of a folder's image embeddings, queried by text or by image.

An index folder holds ``index.faiss``, ``files.csv`` (row i = vector i) and ``index.json`` (model name and
fingerprint, embedding size, preprocessing, the index kind). It reloads without re-embedding and refuses a query
from another model. Kinds (inner product over unit vectors = cosine):

- ``flat``: exact search, every vector compared (right up to a few hundred thousand vectors);
- ``hnsw``: a graph (HNSW, 32 links per node, efSearch 128): sub-linear search, vectors kept whole;
- ``ivf``: IVF-PQ for millions of vectors: ``nlist`` coarse cells (about 4 sqrt(N)), ``nprobe`` (16) of them
  searched over codes of ``d/4`` bytes, and the best ``10 k`` candidates re-ranked by their exact vectors (kept
  beside the codes). Without the re-ranking, PQ codes alone found 0.29-0.51 of the exact top 10 on clustered
  256-d vectors (``benchmarks/index_kinds.py``); with it, 0.98.

An approximate kind's ``recall@10`` against the exact search is measured when the index is built (on up to 1,000
of its own vectors as queries) and recorded in ``index.json`` and ``result.json``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvlkit.artifacts import json_field, read_json_object
from medvlkit.data.dataset import ImageDataset
from medvlkit.engine.features import ImageEmbeddings, embed_texts
from medvlkit.engine.pixels import view_of
from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import ModelBase


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise MedvlkitError(f"index/search need FAISS: pip install faiss-cpu ({err})") from None
    return faiss


@dataclass
class SearchIndex:
    """A loaded index: the FAISS object, the files in vector order, and the model it was built with."""

    index: Any  # a faiss.Index (FAISS ships no type information)
    files: list[str]
    meta: dict
    details: dict[str, dict[str, str]] = field(default_factory=dict)  # file -> label, caption (when the data had them)

    def check_model(self, model: ModelBase) -> None:
        """Refuse a model other than the one that built the index (vectors of two models do not compare)."""
        if model.fingerprint() != self.meta["model_fingerprint"]:
            raise MedvlkitError(f"this index was built with model '{self.meta['model']}' (fingerprint "
                                f"{self.meta['model_fingerprint']}); the query model '{model.name}' differs "
                                f"({model.fingerprint()}). Pass --model {self.meta['model']} or rebuild the index")

    def search_ids(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Top-k (row in ``files``, cosine similarity) per query row of (Q, D) unit vectors; k capped at the size.

        Raises:
            MedvlkitError: queries of another width than the indexed vectors (another model's).
        """
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise MedvlkitError(f"queries of width {queries.shape[-1]} against an index of width {self.index.d}: the "
                                f"query model is not the one that built the index ('{self.meta.get('model')}')")
        k = min(k, len(self.files))
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [[(int(j), float(s)) for j, s in zip(row_ids, row_scores) if j >= 0]
                for row_ids, row_scores in zip(ids, scores)]

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-k (file, cosine similarity) per query row of (Q, D) unit vectors."""
        return [[(self.files[j], s) for j, s in row] for row in self.search_ids(queries, k)]


INDEX_KINDS = ("flat", "hnsw", "ivf")
_PQ_BITS, _HNSW_LINKS, _EF_SEARCH, _NPROBE, _REFINE = 8, 32, 128, 16, 10


def make_index(vectors: np.ndarray, kind: str = "flat"):
    """A FAISS index of ``kind`` holding ``vectors`` (N, D) unit float32, plus its parameters for the record.

    Raises:
        MedvlkitError: an unknown kind, or too few vectors to train IVF-PQ (it needs 2**8 per code book).
    """
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if kind == "flat":
        index, params = faiss.IndexFlatIP(d), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, _HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = _EF_SEARCH
        params = {"links": _HNSW_LINKS, "ef_search": _EF_SEARCH}
    elif kind == "ivf":
        if n < 2 ** _PQ_BITS * 4:
            raise MedvlkitError(f"--kind ivf needs at least {2 ** _PQ_BITS * 4} vectors to train its code books "
                                f"({n} here); use --kind flat (exact) or hnsw")
        nlist = int(max(1, min(n // 39, round(4 * np.sqrt(n)))))
        m = next(m for m in (d // 4, d // 2, d) if m and d % m == 0)
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, _PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        ivf.nprobe = min(_NPROBE, nlist)
        index = faiss.IndexRefineFlat(ivf)  # re-rank the PQ candidates by their exact inner products
        index.k_factor = _REFINE
        index.train(x)
        params = {"nlist": nlist, "pq_bytes": m, "nprobe": ivf.nprobe, "refine_k_factor": _REFINE}
    else:
        raise MedvlkitError(f"--kind {kind}: valid options: {', '.join(INDEX_KINDS)}")
    index.add(x)
    return index, params


def recall_vs_exact(index, vectors: np.ndarray, k: int = 10, n_queries: int = 1000, seed: int = 0) -> float:
    """Mean share of the exact top-``k`` that ``index`` also returns, over up to ``n_queries`` of the indexed
    vectors used as queries (seeded sample)."""
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = x[np.random.default_rng(seed).permutation(len(x))[:n_queries]]
    k = min(k, len(x))
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)]))


def relative_names(items: list[str]) -> list[str]:
    """Each item's path relative to the folder all of them share (``test/PNEUMONIA/person1_virus_6.jpeg``), an
    ``.npz`` member with its array and index (``breastmnist.npz::test_images[3]``): how a person recognises a case."""
    import os

    paths = [item.split("::", 1) for item in items]
    dirs = [os.path.dirname(p[0]) for p in paths]
    try:
        root = os.path.commonpath(dirs) if dirs else ""
    except ValueError:  # relative and absolute paths, or two drives
        root = ""
    names = []
    for path, *member in paths:
        name = os.path.relpath(path, root) if root else os.path.basename(path)
        names.append(name + ("::" + member[0] if member else ""))
    return names


def build_index(emb: ImageEmbeddings, model: ModelBase, dataset: ImageDataset, out_dir: Path,
                kind: str = "flat") -> SearchIndex:
    """Write an index folder of ``kind`` (see the module docstring) from embeddings computed by
    :func:`medvlkit.embed_images`."""
    faiss = _faiss()
    index, params = make_index(emb.vectors, kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out_dir / "index.faiss"))
    with open(out_dir / "files.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "file", "label", "caption", "name"])
        for row, (pos, item, name) in enumerate(zip(emb.indices, emb.items, relative_names(list(emb.items)))):
            w.writerow([row, item, dataset.label_text(int(pos)), dataset.texts[pos] if dataset.texts else "", name])
    meta = {"model": model.name, "model_fingerprint": model.fingerprint(), "embed_dim": int(emb.vectors.shape[1]),
            "n": len(emb.items), "dataset": dataset.name, "preprocess": model.preprocess_cfg.to_dict(),
            "kind": kind, "params": params,
            "recall@10_vs_exact": None if kind == "flat" else recall_vs_exact(index, emb.vectors),
            "skipped": [{"file": f, "reason": r} for f, r in emb.skipped]}
    (out_dir / "index.json").write_text(json.dumps(meta, indent=1) + "\n")
    return SearchIndex(index, list(emb.items), meta)


_FOURCC = {"flat": b"IxFI", "hnsw": b"IHNf", "ivf": b"IxRF"}  # the FAISS index type each kind writes
_KIND = "medvlkit index folder"


def load_index(folder: Path) -> SearchIndex:
    """Reload an index folder written by :func:`build_index`, checked before FAISS reads a byte of it: ``index.json``
    (model, fingerprint, width, size, kind), ``files.csv`` (one row per vector, in order) and the FAISS file's own
    header (its type, width and vector count, and a size that can hold them).

    Raises:
        MedvlkitError: anything damaged or edited, in one line naming the file and what was expected.
    """
    faiss = _faiss()
    folder = Path(folder)
    needed = [folder / n for n in ("index.faiss", "files.csv", "index.json")]
    if not all(p.is_file() for p in needed):
        raise MedvlkitError(f"--index {folder}: not an index folder (needs index.faiss, files.csv, index.json); "
                            "build one with `medvlkit index`")
    meta = _index_meta(folder / "index.json")
    rows = _index_rows(folder / "files.csv", meta["n"])
    _check_faiss_header(folder / "index.faiss", meta)
    try:
        raw = faiss.read_index(str(folder / "index.faiss"))  # nprobe / efSearch travel in the file
    except RuntimeError as err:
        raise MedvlkitError(f"{folder / 'index.faiss'}: not a valid {_KIND} file ({first_line(err)[-160:]}); "
                            "build the index again") from None
    if raw.d != meta["embed_dim"] or raw.ntotal != meta["n"]:
        raise MedvlkitError(f"{folder / 'index.faiss'}: holds {raw.ntotal} vectors of width {raw.d}; index.json says "
                            f"{meta['n']} of width {meta['embed_dim']}")
    index = SearchIndex(raw, [r["file"] for r in rows], meta)
    index.details = {r["file"]: {"label": r.get("label", ""), "caption": r.get("caption", ""),
                                 "name": r.get("name") or Path(r["file"]).name} for r in rows}  # older: no name
    return index


def _index_meta(path: Path) -> dict:
    meta = read_json_object(path, _KIND)
    for name in ("model", "model_fingerprint"):
        json_field(meta, name, str, path, _KIND)
    json_field(meta, "embed_dim", int, path, _KIND, check=lambda v: v > 0, expected="a positive integer")
    json_field(meta, "n", int, path, _KIND, check=lambda v: v > 0, expected="a positive integer")
    json_field(meta, "kind", str, path, _KIND, check=lambda v: v in INDEX_KINDS, expected=" or ".join(INDEX_KINDS))
    return meta


def _index_rows(path: Path, n: int) -> list[dict]:
    from medvlkit.data.adapters.csv_labels import read_csv_rows

    header, rows = read_csv_rows(path)
    if header[:2] != ["index", "file"]:
        raise MedvlkitError(f"{path}: not a valid {_KIND} file list (its columns: {header}; expected index, file, "
                            "label, caption)")
    if len(rows) != n or any(r["index"] != str(i) for i, r in enumerate(rows)):
        raise MedvlkitError(f"{path}: {len(rows)} rows for the {n} indexed vectors (or rows out of order): row i "
                            "must name the file of vector i; build the index again")
    return rows


def _check_faiss_header(path: Path, meta: dict) -> None:
    """The FAISS file's type, width and vector count from its first 16 bytes, and a size that can hold the vectors
    (every kind keeps them exactly): a file claiming a huge count is never handed to FAISS."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16 or head[:4] != _FOURCC[meta["kind"]]:
        raise MedvlkitError(f"{path}: not a FAISS {meta['kind']} index (type {head[:4]!r}, expected "
                            f"{_FOURCC[meta['kind']]!r}); build the index again")
    d, ntotal = struct.unpack("<i", head[4:8])[0], struct.unpack("<q", head[8:16])[0]
    if d != meta["embed_dim"] or ntotal != meta["n"]:
        raise MedvlkitError(f"{path}: its header says {ntotal} vectors of width {d}; index.json says {meta['n']} of "
                            f"width {meta['embed_dim']}")
    if size < ntotal * d * 4:
        raise MedvlkitError(f"{path}: {size} bytes cannot hold {ntotal} vectors of width {d} (truncated?); build the "
                            "index again")


def query_vectors(model: ModelBase, texts: list[str] | None = None, images: list[str] | None = None) -> np.ndarray:
    """Unit query vectors from texts or image files. Returns (Q, D)."""
    import torch

    if texts:
        return embed_texts(model, texts)
    if not images:
        raise MedvlkitError("pass a text query (--text) or a query image (--image)")
    pre = model.image_preprocessor
    pixels = pre.normalize(torch.stack([view_of(p, pre) for p in images]).to(model.device))
    with torch.inference_mode():
        return model.encode_image(pixels).float().cpu().numpy()


def index_task(model: ModelBase, dataset: ImageDataset, out_dir: Path, config: dict, run=None, gate: bool = False,
               gate_threshold: float | None = None, kind: str = "flat") -> dict:
    """The ``index`` task: (optionally gate, then) embed ``dataset`` and write an index folder with result.json.
    ``run``: :class:`medvlkit.engine.options.RunOptions`. Returns the result."""
    import time

    from medvlkit.engine.features import embed_images
    from medvlkit.engine.options import RunOptions
    from medvlkit.engine.results import provenance, write_result
    from medvlkit.tasks.gate import gate_before

    if kind not in INDEX_KINDS:  # before any embedding work
        raise MedvlkitError(f"--kind {kind}: valid options: {', '.join(INDEX_KINDS)}")
    kwargs = (run or RunOptions()).embed_kwargs()
    start = time.perf_counter()
    dataset, gated, emb = gate_before(model, dataset, gate, gate_threshold, **kwargs)
    emb = emb or embed_images(model, dataset, **kwargs)
    idx = build_index(emb, model, dataset, out_dir, kind)
    if gated:
        idx.meta |= gated
        (out_dir / "index.json").write_text(json.dumps(idx.meta, indent=1) + "\n")
    path = write_result(out_dir, dataset=dataset.name, model=model.name, task="index", config=config,
                        n_skipped=len(emb.skipped),
                        metrics={"n_images": len(idx.files), "seconds": time.perf_counter() - start}
                        | ({"recall@10_vs_exact": idx.meta["recall@10_vs_exact"]} if kind != "flat" else {}),
                        extra={"skipped": [{"file": f, "reason": r} for f, r in emb.skipped]} | gated
                        | provenance(model, dataset, emb))
    return json.loads(path.read_text())


def search_task(index_dir: Path, text: str | None = None, image: Path | None = None, k: int = 5,
                model_spec: str | None = None, run=None) -> list[dict]:
    """The ``search`` task: the ``k`` nearest indexed images to one text or one image, as rows of file, score,
    label, caption and name (the file relative to the folder the indexed files share). The query model defaults to
    the index's own (any other is refused by fingerprint).

    Raises:
        MedvlkitError: both or neither query given, ``k`` < 1, not an index folder, another model.
    """
    from medvlkit.engine.options import RunOptions

    if (text is None) == (image is None):
        raise MedvlkitError("pass exactly one of --text or --image")
    if k < 1:
        raise MedvlkitError(f"-k {k}: must be at least 1")
    idx = load_index(index_dir)
    model = (run or RunOptions()).load_model(model_spec or idx.meta["model"])
    idx.check_model(model)
    hits = idx.search(query_vectors(model, [text] if text else None, [str(image)] if image else None), k)[0]
    return [{"file": f, "score": s} | idx.details.get(f, {}) for f, s in hits]
