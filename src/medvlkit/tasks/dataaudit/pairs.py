"""Duplicate and near-duplicate pairs of a scanned dataset (:mod:`medvlkit.tasks.dataaudit.scan`), never comparing all
pairs.

- **exact**: the same decoded pixels (:func:`~medvlkit.tasks.dataaudit.hashes.pixel_hash`).
- **near**: candidates are pairs whose perceptual hashes (three central crops x eight rotations/flips) lie within
  Hamming distance 7, found with FAISS's binary multi-index hash (4 x 16-bit blocks, one-bit probes: exact for that
  radius); with a model's embeddings, also each image's nearest neighbours (FAISS). A candidate is a near-duplicate when
  the 64 x 64 grey thumbnails, aligned by the crop and transform that brought the hashes closest (and a small turn),
  correlate at ``near_threshold`` (0.97) or more **and** their fine detail (a difference of Gaussians, which drops
  shading) correlates at :data:`DETAIL_THRESHOLD` (0.85) or more.
- **plain**: a candidate that passes the first test but whose images hold less than :data:`MIN_DETAIL` grey levels of
  fine detail: two blurred fundus discs share nothing but their shading and correlate at 0.99 without being the same
  picture. Such pairs cannot be confirmed from pixels; they are listed (``plain_pairs``), never counted or excluded.

The thresholds come from measurements (``benchmarks/audit_thresholds.py``, 40 images from each of six real sets):
copies resized to half and re-encoded as JPEG at quality 60, cropped 5% a side, rotated 90 degrees, or flipped and
re-encoded correlate at 0.967 or more and their fine detail at 0.979 or more; cropped 10% a side they reach 0.954 on
brain MRI (0.969-0.996 on the other sets), so some such copies are missed at 0.97. Different adult chest films that
look alike (hash within 7) correlate at 0.958 or less (99th percentile, none at 0.97). On the fundus set 256
look-alike pairs reach 0.97, 158 of them between images too plain to confirm (76 of its 1,200 images, the blurred
cataract discs; one image or none in each of the chest, MRI, ultrasound and histology sets); the rest are copies
(mirrored, recoloured) whose fine detail correlates at 0.95 or more (5th percentile). A copy turned by 10
degrees and cropped 12.5% a side is beyond this search (hash distance up to 24): ``augmented_copies`` finds those.

- **augmented** (``augmented_copies``, for data made by augmentation): :func:`augmented_pairs`. Two rotate-and-crop
  copies of one original (not only a copy and its original) are found: on 60 LC25000 tiles each made into two copies
  (turned by -25..25 degrees, flipped at random, JPEG 90), every pair correlated at 0.874 or more (5th percentile
  0.919); of the 935 candidate pairs between tiles of two different classes of the real set, none above 0.763.
The embedding of ``lite`` is no duplicate detector (a re-encoded copy was less similar to its original than distinct
images were to their neighbours), so candidates from embeddings are only proposals: the thumbnails decide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvlkit.tasks.dataaudit.hashes import (
    DIHEDRAL,
    FLIPS,
    RELATIVE_ANGLES,
    RELATIVE_ZOOMS,
    SCALES,
    THUMB_SIDE,
    best_alignment,
    detail_amount,
    disk,
    unit_rows,
    warp_matrix,
)
from medvlkit.tasks.dataaudit.scan import Facts

NEAR_THRESHOLD = 0.97
DETAIL_THRESHOLD = 0.85  # copies' fine detail correlates at >= 0.91 (half size + JPEG 60 of a fundus photograph)
MIN_DETAIL = 1.0  # grey levels of fine detail below which an image is too plain to confirm a pair (see the docstring)
HASH_RADIUS = 7
AUGMENTED_THRESHOLD = 0.85  # copies of one LC25000 tile vs each other: >= 0.87; tiles of two classes: <= 0.77


@dataclass
class Pair:
    """Two images (rows of :class:`Facts`, ``a < b``) that are the same picture.

    Attributes:
        kind: ``exact`` (identical decoded pixels), ``near``, ``augmented``, or ``plain``: two images that look alike
            but hold too little fine detail (a blurred fundus disc) to tell a copy from another image; listed, never
            counted as a duplicate.
        hash_distance: the smallest Hamming distance between their perceptual hashes over crops and transforms.
        correlation: the aligned thumbnails' correlation (1.0 for exact pairs).
        transform: what maps b onto a (:data:`~medvlkit.tasks.dataaudit.hashes.DIHEDRAL`); ``scales``: the crops
        matched.
    """

    a: int
    b: int
    kind: str
    hash_distance: int
    correlation: float
    transform: str
    scales: tuple[float, float]


def _faiss():
    import faiss

    return faiss


def hash_candidates(hashes: np.ndarray, radius: int = HASH_RADIUS) -> set[tuple[int, int]]:
    """Row pairs (a < b) with some crop/transform hash of one within ``radius`` of a crop hash of the other.
    ``hashes``: (N, 3, 8) uint64."""
    faiss = _faiss()
    n = len(hashes)
    if n < 2:
        return set()
    base = np.ascontiguousarray(hashes[:, :, 0].reshape(-1)).view(np.uint8).reshape(-1, 8)  # (3N, 8): row*3 + crop
    index = faiss.IndexBinaryMultiHash(64, 4, 16)
    index.nflip = 1
    index.add(base)
    pairs: set[tuple[int, int]] = set()
    queries = np.ascontiguousarray(hashes.reshape(-1)).view(np.uint8).reshape(-1, 8)  # (24N, 8): row*24 + crop*8 + t
    for start in range(0, len(queries), 1 << 16):
        lims, _, ids = index.range_search(queries[start:start + (1 << 16)], radius + 1)  # faiss: distance < radius
        rows = np.repeat(np.arange(start, start + len(lims) - 1) // 24, np.diff(lims.astype(np.int64)))
        others = ids // 3
        keep = rows != others
        a, b = np.minimum(rows[keep], others[keep]), np.maximum(rows[keep], others[keep])
        pairs.update(zip(a.tolist(), b.tolist()))
    return pairs


def embedding_candidates(vectors: np.ndarray, k: int = 5) -> set[tuple[int, int]]:
    """Row pairs (a < b) where b is among a's ``k`` nearest neighbours by cosine (unit vectors (N, D))."""
    faiss = _faiss()
    n = len(vectors)
    if n < 2:
        return set()
    index = faiss.IndexFlatIP(vectors.shape[1])
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index.add(x)
    _, ids = index.search(x, min(k + 1, n))
    rows = np.repeat(np.arange(n), ids.shape[1])
    others = ids.reshape(-1)
    keep = (others >= 0) & (others != rows)
    a, b = np.minimum(rows[keep], others[keep]), np.maximum(rows[keep], others[keep])
    return set(zip(a.tolist(), b.tolist()))


def augmented_pairs(thumbs: np.ndarray, threshold: float = AUGMENTED_THRESHOLD, k: int = 3, coarse: int = 16,
                    batch: int = 32, progress: bool = False) -> list[tuple[int, int, float, str]]:
    """Pairs where one image is a rotate-and-crop and/or flipped copy of the other, or both are copies of one original,
    as augmentation tools make them (LC25000): each image seen flipped (4 ways), turned by each of
    :data:`~medvlkit.tasks.dataaudit.hashes.RELATIVE_ANGLES` (up to 50 degrees: two copies each turned by up to 25) and
    zoomed by each of :data:`~medvlkit.tasks.dataaudit.hashes.RELATIVE_ZOOMS` (820 views, made by one sparse product a
    batch) is searched, on its central disk at ``coarse`` px, against every image's plain view with FAISS; the ``k``
    best of each view are confirmed on the central disk at 64 px (correlation >= ``threshold``).
    Returns (a, b, correlation, transform) with a < b."""
    from scipy.sparse import vstack
    from tqdm.auto import tqdm

    faiss = _faiss()
    full = thumbs[:, 0].reshape(len(thumbs), -1).astype(np.float32)  # (N, 4096): the uncropped views
    n = len(full)
    small, fine = disk(coarse), disk(THUMB_SIDE)
    index = faiss.IndexFlatIP(int(small.sum()))
    index.add(unit_rows((warp_matrix(0, 0.0, 1.0, coarse, small) @ full.T).T))
    views = [(f, a, z) for f in FLIPS for a in RELATIVE_ANGLES for z in RELATIVE_ZOOMS]
    warp = vstack([warp_matrix(f, a, z, coarse, small) for f, a, z in views]).tocsr()
    plain = unit_rows(full.reshape(n, THUMB_SIDE, THUMB_SIDE)[:, fine])
    confirm_cache: dict[int, object] = {}
    best: dict[tuple[int, int], tuple[float, str]] = {}
    for start in tqdm(range(0, n, batch), desc="audit: augmented copies", unit="batch", disable=not progress):
        rows = np.arange(start, min(start + batch, n))
        seen = (warp @ full[rows].T).T.reshape(len(rows) * len(views), -1)  # (B * V, P)
        scores, ids = index.search(unit_rows(seen), min(k + 1, n))
        for q in np.nonzero((scores >= threshold - 0.15).any(1))[0]:
            a, v = int(rows[q // len(views)]), int(q % len(views))
            for score, b in zip(scores[q], ids[q]):
                if b < 0 or b == a or score < threshold - 0.15:
                    continue
                if v not in confirm_cache:
                    confirm_cache[v] = warp_matrix(*views[v], THUMB_SIDE, fine)
                corr = float(unit_rows((confirm_cache[v] @ full[a])[None])[0] @ plain[b])
                key = (min(a, int(b)), max(a, int(b)))
                f, angle, zoom = views[v]
                if corr >= threshold and corr > best.get(key, (-1.0, ""))[0]:
                    best[key] = (corr, f"flip{f}+{angle:g}deg+zoom{zoom:g}")
    return [(a, b, round(c, 4), t) for (a, b), (c, t) in sorted(best.items())]


def find_pairs(facts: Facts, near_threshold: float = NEAR_THRESHOLD, embeddings: np.ndarray | None = None,
               k: int = 5, augmented_copies: bool = False, progress: bool = False) -> list[Pair]:
    """Every exact and near-duplicate pair of the scanned images (see the module docstring).

    Args:
        facts: the scan.
        near_threshold: the aligned-thumbnail correlation from which a candidate is a near-duplicate.
        embeddings: (N, D) unit vectors of the same rows, whose nearest neighbours are candidates too.
        k: neighbours per image from the embeddings.
        augmented_copies: also search rotate-and-crop / flip copies (:func:`augmented_pairs`; for data made by
            augmentation: it costs 84 searches an image, and on images that all look alike it finds look-alikes).
    """
    out: dict[tuple[int, int], Pair] = {}
    by_pixels: dict[str, list[int]] = {}
    for row, key in enumerate(facts.pixel):
        by_pixels.setdefault(key, []).append(row)
    for rows in by_pixels.values():
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                out[(a, b)] = Pair(a, b, "exact", 0, 1.0, DIHEDRAL[0], (1.0, 1.0))
    candidates = hash_candidates(facts.hashes)
    if embeddings is not None:
        candidates |= embedding_candidates(embeddings, k)
    for a, b in sorted(candidates - set(out)):
        al = best_alignment(facts.hashes[a], facts.hashes[b], facts.thumbs[a], facts.thumbs[b])
        if al.correlation < near_threshold or (al.detail >= MIN_DETAIL and al.detail_correlation < DETAIL_THRESHOLD):
            continue
        kind = "near" if al.detail >= MIN_DETAIL else "plain"
        out[(a, b)] = Pair(a, b, kind, al.distance, round(al.correlation, 4),
                           DIHEDRAL[al.t] + (f"+{al.angle}deg" if al.angle else ""), (SCALES[al.i], SCALES[al.j]))
    if augmented_copies:
        amount = [detail_amount(t) for t in facts.thumbs[:, 0]]
        for a, b, corr, transform in augmented_pairs(facts.thumbs, progress=progress):
            if (a, b) not in out:
                kind = "augmented" if min(amount[a], amount[b]) >= MIN_DETAIL else "plain"
                out[(a, b)] = Pair(a, b, kind, -1, corr, transform, (1.0, 1.0))
    return sorted(out.values(), key=lambda p: (p.a, p.b))
