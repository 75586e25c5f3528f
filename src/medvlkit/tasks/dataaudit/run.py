"""``medvlkit audit``: what in a dataset would inflate a number before any number is computed.

Every split of the data (train, val, test where it has them; else all of it as one) is scanned once
(:mod:`~medvlkit.tasks.dataaudit.scan`), and the audit reports:

- exact and near-duplicate pairs (:mod:`~medvlkit.tasks.dataaudit.pairs`), each within one split or across two; pairs of
  look-alikes too plain to confirm (``plain_pairs``: blurred fundus discs) are listed apart and never counted;
- label conflicts: pairs whose two images carry different labels;
- group leakage: a patient / study id (``group_column`` in a CSV, or ``group_pattern`` on file names) in two splits;
- the shortcut check (:mod:`~medvlkit.tasks.dataaudit.shortcuts`), class balance per split, and unreadable files;
- with a model, the images it was trained on (its training manifest), per split.

Pairs join into families (a copy of a copy belongs to its original's family). Its exclusion list names, for every
family and leaking group found in two splits, the members on the side that trains or tunes (train before val before
test: never a test image); ``--exclude AUDIT_DIR`` on the training and evaluation verbs drops
those images (:mod:`medvlkit.data.exclusions`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvlkit.data.dataset import ImageDataset
from medvlkit.engine.options import DataOptions, RunOptions
from medvlkit.errors import MedvlkitError, NoSplitsError
from medvlkit.tasks.dataaudit.pairs import NEAR_THRESHOLD, Pair, find_pairs
from medvlkit.tasks.dataaudit.registry import register_audit
from medvlkit.tasks.dataaudit.report import write_audit
from medvlkit.tasks.dataaudit.scan import Facts, scan
from medvlkit.tasks.dataaudit.shortcuts import shortcut_check

if TYPE_CHECKING:
    from medvlkit.models.base import ModelBase


SPLIT_ORDER = ("train", "val", "test")  # the side that trains or tunes comes first; test is never excluded


@dataclass
class AuditConfig:
    """Options of one audit.

    Attributes:
        data: the dataset (any format medvlkit reads).
        splits: the splits to audit (default: every one of train, val, test the data has; else all of it).
        model: a model spec: its embeddings propose near-duplicate candidates and are scored in the shortcut check,
            and its training manifest is compared with every split (None: neither).
        group_pattern: a regex on file names giving the patient id (a CSV's patient column is read by itself).
        near_threshold: aligned-thumbnail correlation from which a candidate pair is a near-duplicate.
        augmented: also search copies made by rotate-and-crop (up to 25 degrees) and flip augmentation (LC25000);
            slower, and for data known to be made so.
        bootstrap, seed: CIs of the shortcut check.
    """

    data: str
    splits: tuple[str, ...] = ()
    model: str | None = None
    group_pattern: str | None = None
    near_threshold: float = NEAR_THRESHOLD
    augmented: bool = False
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.near_threshold <= 1:
            raise MedvlkitError(f"--near-threshold {self.near_threshold}: a correlation in (0, 1]")


def load_splits(data: str, opts: DataOptions, splits: tuple[str, ...] = ()) -> list[tuple[str, ImageDataset]]:
    """Each split asked (default: each of train, val, test that exists), or all of the data as ``all``."""
    parts = []
    for name in splits or SPLIT_ORDER:
        try:
            parts.append((name, opts.load(data, name)))
        except NoSplitsError:
            if splits:
                raise
            break
        except MedvlkitError:
            if splits:
                raise
    return parts or [("all", opts.load(data))]


def combine(parts: list[tuple[str, ImageDataset]]) -> tuple[ImageDataset, list[str]]:
    """One dataset of every split's items (labels over the union of class names; unknown where a split lacks a
    class) and each item's split."""
    names = list(dict.fromkeys(c for _, ds in parts for c in ds.classnames))
    items, labels, texts, skipped, split_of = [], [], [], [], []
    groups: list[str | None] = []
    for split, ds in parts:
        items += ds.items
        split_of += [split] * len(ds)
        skipped += ds.skipped
        if names:
            block = np.full((len(ds), len(names)), np.nan, np.float32)
            if ds.has_labels:
                for c, name in enumerate(ds.classnames):
                    block[:, names.index(name)] = ds.label_matrix[:, c]
            labels.append(block)
        texts += ds.texts or [""] * len(ds)
        groups += ds.groups or [None] * len(ds)
    first = parts[0][1]
    merged = ImageDataset(items, first.name, names, np.concatenate(labels) if names else None,
                          any(ds.multilabel for _, ds in parts), texts if any(texts) else None, None,
                          dict(first.meta), groups if any(g is not None for g in groups) else None, skipped)
    return merged, split_of


def _label_of(ds: ImageDataset, pos: int) -> str:
    return ds.label_text(pos) if ds.has_labels else ""


def _pair_rows(pairs: list[Pair], facts: Facts, ds: ImageDataset, split_of: list[str]) -> list[dict[str, Any]]:
    rows = []
    for p in pairs:
        a, b = int(facts.positions[p.a]), int(facts.positions[p.b])
        la, lb = _label_of(ds, a), _label_of(ds, b)
        rows.append({"kind": p.kind, "file_a": ds.items[a], "split_a": split_of[a], "label_a": la,
                     "file_b": ds.items[b], "split_b": split_of[b], "label_b": lb,
                     "cross_split": split_of[a] != split_of[b], "label_conflict": bool(la != lb and la and lb),
                     "hash_distance": p.hash_distance, "correlation": p.correlation, "transform": p.transform,
                     "crops": list(p.scales)})
    return rows


def group_leaks(ds: ImageDataset, split_of: list[str], pattern: str | None) -> list[dict[str, Any]]:
    """Patient / study ids present in more than one split, with their images per split."""
    from medvlkit.data.splits import group_ids

    if pattern is None and ds.groups is None:
        return []
    ids = group_ids(ds.items, pattern, ds.groups)
    where: dict[str, dict[str, list[str]]] = {}
    for item, gid, split in zip(ds.items, ids, split_of):
        if gid and gid != item:
            where.setdefault(gid, {}).setdefault(split, []).append(item)
    return [{"group": g, "splits": sorted(s), "images": s} for g, s in sorted(where.items()) if len(s) > 1]


def balance(ds: ImageDataset, split_of: list[str]) -> dict[str, Any]:
    """Images per class per split (multi-label: positives per class)."""
    out: dict[str, dict[str, int]] = {}
    for split in dict.fromkeys(split_of):
        rows = [i for i, s in enumerate(split_of) if s == split]
        out[split] = {"n": len(rows)} | ({c: int(np.nansum(ds.label_matrix[rows, k] == 1))
                                          for k, c in enumerate(ds.classnames)} if ds.has_labels else {})
    return out


def families(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The connected groups of images that pairs join (a copy of a copy is in its original's family), largest
    first: each with its id, size and files per split."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    split_of = {}
    for p in pairs:
        split_of[p["file_a"]], split_of[p["file_b"]] = p["split_a"], p["split_b"]
        a, b = root(p["file_a"]), root(p["file_b"])
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for file in sorted(parent):
        members.setdefault(root(file), []).append(file)
    groups = sorted(members.values(), key=lambda m: (-len(m), m[0]))
    out = []
    for k, files in enumerate(groups):
        splits: dict[str, list[str]] = {}
        for f in files:
            splits.setdefault(split_of[f], []).append(f)
        out.append({"family": k, "size": len(files), "splits": splits})
    return out


def exclusion_list(fams: list[dict[str, Any]], leaks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every family of copies and every patient found in two splits, the images on the side that trains or
    tunes: of its splits, all but the one latest in train, val, test (``all`` never). Test images are never
    excluded. Whole families go, not just the pairs found: a train copy of a train copy of a test image leaks too."""
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    out: dict[str, str] = {}
    for fam in fams:
        splits = [s for s in fam["splits"] if s in rank]
        if len(splits) < 2:
            continue
        last = max(splits, key=lambda s: rank[s])
        for split in splits:
            if split != last:
                for file in fam["splits"][split]:
                    out.setdefault(file, f"copy (family {fam['family']}) of {last} image {fam['splits'][last][0]}")
    for leak in leaks:
        splits = [s for s in leak["splits"] if s in rank]
        last = max(splits, key=lambda s: rank[s]) if splits else None
        for split in splits:
            if split != last:
                for file in leak["images"][split]:
                    out.setdefault(file, f"patient {leak['group']} also in {last}")
    return [{"file": f, "why": why} for f, why in sorted(out.items())]


def run_audit(cfg: AuditConfig, out_dir: Path, data: DataOptions | None = None, run: RunOptions | None = None,
              model: ModelBase | None = None) -> dict[str, Any]:
    """Audit ``cfg.data`` and write ``audit.json``, one CSV per finding kind and ``result.json`` into ``out_dir``.
    ``model``: the loaded ``cfg.model`` when the caller has it. Returns the audit.

    Raises:
        MedvlkitError: the data cannot be read.
    """
    data, run = data or DataOptions(), run or RunOptions()
    parts = load_splits(cfg.data, data, cfg.splits)
    ds, split_of = combine(parts)
    facts = scan(ds, run.workers, run.progress)
    from medvlkit.engine.seen import PixelHashStore

    PixelHashStore(Path(run.cache_dir) if run.cache_dir else None).put(
        {ds.items[p]: h for p, h in zip(facts.positions, facts.pixel)})  # the training-data check reuses them
    embeddings, seen = None, None
    if cfg.model or model is not None:
        from medvlkit.engine.features import embed_images

        model = model if model is not None else run.load_model(str(cfg.model))
        seen = training_overlap(model, ds, split_of, facts, data.training_manifest)
        emb = embed_images(model, ds.subset(facts.positions), **(run.embed_kwargs() | {"on_error": "skip"}))
        embeddings = np.zeros((len(facts.positions), emb.vectors.shape[1]), np.float32)
        embeddings[emb.indices] = emb.vectors
    found = _pair_rows(find_pairs(facts, cfg.near_threshold, embeddings, augmented_copies=cfg.augmented,
                                  progress=run.progress), facts, ds,
                       split_of)
    pairs = [p for p in found if p["kind"] != "plain"]
    leaks = group_leaks(ds, split_of, cfg.group_pattern)
    shortcuts = None
    if ds.has_labels and len(facts.positions) >= 10:
        rows = facts.positions
        shortcuts = shortcut_check(facts.properties, facts.formats, [ds.items[i] for i in rows], ds.label_matrix[rows],
                                   ds.classnames, embeddings, cfg.bootstrap, cfg.seed)
    audit: dict[str, Any] = {"config": asdict(cfg), "dataset": ds.name, "splits": {s: sum(1 for x in split_of if x == s)
                                                                    for s in dict.fromkeys(split_of)},
             "n_images": len(ds), "n_read": int(len(facts.positions)), "pairs": pairs,
             "plain_pairs": [p for p in found if p["kind"] == "plain"], "group_leaks": leaks,
             "shortcuts": shortcuts, "balance": balance(ds, split_of),
             "unreadable": [{"file": f, "reason": r} for f, r in facts.unreadable],
             "families": families(pairs), "seen_by_model": seen}
    audit["exclude"] = exclusion_list(audit["families"], leaks)
    audit["summary"] = summarize(audit)
    write_audit(audit, out_dir, ds, model)
    register_audit(cfg.data, out_dir, audit["summary"], run.cache_dir)
    return audit


def training_overlap(model: ModelBase, ds: ImageDataset, split_of: list[str], facts: Facts,
                     training_manifest: str | None = None) -> dict[str, Any]:
    """Per split, how many images are in the model's training data (:mod:`medvlkit.engine.seen`), and which."""
    from medvlkit.engine.seen import manifest_of, seen_mask

    manifest = manifest_of(model, training_manifest)
    if manifest is None:
        return {"declared": False, "note": f"{model.name} declares no training data; pass --training-manifest"}
    hashes = [""] * len(ds)
    for pos, value in zip(facts.positions, facts.pixel):
        hashes[pos] = value
    mask = seen_mask(ds, manifest, hashes)
    per_split = {s: {"n_images": sum(1 for x in split_of if x == s),
                     "n_seen": int(sum(1 for x, m in zip(split_of, mask) if x == s and m))}
                 for s in dict.fromkeys(split_of)}
    return {"declared": True, "model": model.name, "training_data": manifest.record(), "per_split": per_split,
            "files": [{"file": ds.items[i], "split": split_of[i]} for i in np.flatnonzero(mask)]}


def summarize(audit: dict[str, Any]) -> dict[str, Any]:
    """Counts for people and for ``result.json``'s metrics."""
    pairs = audit["pairs"]

    def count(kind: str | None = None, cross: bool | None = None, conflict: bool = False) -> int:
        return sum(1 for p in pairs if (kind is None or p["kind"] == kind) and (cross is None or p["cross_split"]
                                                                                  == cross)
                   and (not conflict or p["label_conflict"]))
    return {"exact_pairs": count("exact"), "near_pairs": count("near"), "augmented_pairs": count("augmented"),
            "cross_split_pairs": count(cross=True),
            "within_split_pairs": count(cross=False), "label_conflicts": count(conflict=True),
            "families": len(audit["families"]),
            "images_in_families": sum(f["size"] for f in audit["families"]),
            "plain_pairs": len(audit.get("plain_pairs", [])),
            "leaking_groups": len(audit["group_leaks"]), "excluded_images": len(audit["exclude"]),
            "unreadable": len(audit["unreadable"]),
            "shortcut_flagged": len((audit["shortcuts"] or {}).get("flagged", [])),
            "seen_by_model": len((audit.get("seen_by_model") or {}).get("files", []))}
