"""Image fingerprints for the audit: what two files have in common, whatever their bytes.

- :func:`pixel_hash`: sha1 of the decoded pixels (mode, size, values): the same image saved as PNG and as a
  lossless TIFF, or under two names, hashes the same; any changed pixel does not.
- :func:`dihedral_phashes`: the 64-bit DCT perceptual hash (the classic pHash: grey 32 x 32 Lanczos resize, 2-D DCT,
  the 8 x 8 lowest frequencies against their median) of the image under each of the 8 rotations and flips, so a
  rotated or flipped copy matches the original through one of them. Robust to resizing, re-encoding and small crops.
- :func:`fingerprint`: both, the perceptual hashes at three central crops (100%, 90%, 80%: a copy cropped by up to
  10% a side matches one of them) and 64 x 64 grey thumbnails of those crops, which :func:`best_alignment` compares
  under the crops and transforms that bring the hashes closest, to confirm a pair (candidates come from FAISS's binary
  multi-index hash: :func:`medvlkit.tasks.dataaudit.pairs.hash_candidates`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from medvlkit.data.io import pixel_hash  # the decoded-pixel identity lives with the reader

HASH_SIDE, LOW, THUMB_SIDE = 32, 8, 64
DIHEDRAL = ("identity", "rot90", "rot180", "rot270", "flip", "flip+rot90", "flip+rot180", "flip+rot270")


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n, n): ``D @ x`` is scipy's ``dct(x, norm="ortho")``."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_DCT = _dct_matrix(HASH_SIDE)


def _bits(grey: np.ndarray) -> np.uint64:
    """pHash of a (32, 32) float array: the 8 x 8 low frequencies of its 2-D DCT against their median."""
    low = (_DCT @ grey @ _DCT.T)[:LOW, :LOW].ravel()
    bits = low > np.median(low)
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def _thumb(image: Image.Image) -> np.ndarray:
    """(32, 32) float: the grey image resized as pHash resizes it."""
    return np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), dtype=np.float64)


def dihedral(a: np.ndarray, t: int) -> np.ndarray:
    """Transform ``t`` of :data:`DIHEDRAL` applied to a square array: ``t // 4`` flips, ``t % 4`` quarter turns."""
    return np.rot90(a[:, ::-1] if t >= 4 else a, t % 4)


def dihedral_phashes(image: Image.Image | np.ndarray) -> np.ndarray:
    """(8,) uint64: the pHash of the image (or of its (32, 32) thumbnail) under each transform of :data:`DIHEDRAL`."""
    grey = image if isinstance(image, np.ndarray) else _thumb(image)
    return np.array([_bits(dihedral(grey, t)) for t in range(8)], dtype=np.uint64)


SCALES = (1.0, 0.9, 0.8)


def fingerprint(image: Image.Image) -> tuple[str, np.ndarray, np.ndarray]:
    """(pixel hash, (3, 8) uint64 pHashes of the central crops of :data:`SCALES` under every transform, (3, 64, 64)
    uint8 grey thumbnails of those crops)."""
    w, h = image.size
    hashes, thumbs = [], []
    for s in SCALES:
        cw, ch = max(1, int(round(w * s))), max(1, int(round(h * s)))
        left, top = (w - cw) // 2, (h - ch) // 2
        crop = image.crop((left, top, left + cw, top + ch)).convert("L")
        hashes.append(dihedral_phashes(_thumb(crop)))
        thumbs.append(np.asarray(crop.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)))
    return pixel_hash(image), np.stack(hashes), np.stack(thumbs).astype(np.uint8)


def pair_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3, 3, 8) Hamming distances between crop ``i`` of image A (untransformed) and crop ``j`` of image B under
    transform ``t``, from their (3, 8) hashes."""
    return hamming(a[:, 0][:, None, None], b[None])


ANGLES = tuple(range(-24, 25, 3))  # small rotations searched when confirming a pair (augmentation rotates a little)
_YY, _XX = np.mgrid[:THUMB_SIDE, :THUMB_SIDE]
_R2 = (_YY - (THUMB_SIDE - 1) / 2) ** 2 + (_XX - (THUMB_SIDE - 1) / 2) ** 2
_DISK = _R2 <= (0.35 * THUMB_SIDE) ** 2
_INNER = _R2 <= (0.2 * THUMB_SIDE) ** 2  # inside any round field of view (fundus), whose rim is detail every image has


class Alignment(NamedTuple):
    """How image B lines up with image A (:func:`best_alignment`).

    Attributes:
        distance: the smallest Hamming distance between their perceptual hashes.
        correlation: the aligned grey thumbnails' correlation over the central disk.
        i, j, t, angle: the crop of A, the crop of B, the transform of B (:data:`DIHEDRAL`) and B's small turn.
        detail_correlation: the same correlation of their fine detail (:func:`detail`): a copy keeps it, two smooth
            images that merely share their shading do not.
        detail: the lesser of the two images' amount of fine detail (:func:`detail_amount`, grey levels): below
            :data:`MIN_DETAIL` an image is too plain for any pair of it to be confirmed.
    """

    distance: int
    correlation: float
    i: int
    j: int
    t: int
    angle: int
    detail_correlation: float
    detail: float


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = int(3 * sigma)
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    return k / k.sum()


_FINE, _COARSE = _gauss_kernel(1.5), _gauss_kernel(4.0)


def _blur(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    r = len(k) // 2
    p = np.pad(a, r, mode="reflect")
    p = np.stack([np.convolve(row, k, "valid") for row in p])
    return np.stack([np.convolve(col, k, "valid") for col in p.T]).T


def detail(thumb: np.ndarray) -> np.ndarray:
    """The fine detail of a grey thumbnail: a difference of Gaussians (sigma 1.5 and 4 px at 64 px), which drops the
    shading (illumination, vignetting) that any two smooth images share."""
    a = np.asarray(thumb, np.float64)
    return _blur(a, _FINE) - _blur(a, _COARSE)


def detail_amount(thumb: np.ndarray) -> float:
    """How much fine detail an image holds: the standard deviation of :func:`detail` inside the central 40% disk
    (grey levels). A blurred cataract fundus disc holds about 0.3; chest films, MRI, histology and ultrasound 2-15."""
    return float(detail(thumb)[_INNER].std())


def best_alignment(hashes_a: np.ndarray, hashes_b: np.ndarray, thumbs_a: np.ndarray, thumbs_b: np.ndarray,
                   slack: int = 2, hash_radius: int = 7) -> Alignment:
    """How B lines up with A, and how well. Among the (crop of A, crop of B, transform) whose hash distance is
    within ``slack`` of the smallest (several tie, and the closest hash is not always the right alignment; when even
    the smallest is beyond ``hash_radius``, the full crops under every transform), B's thumbnail is also turned by
    each small angle of :data:`ANGLES`; the best correlation over the central disk (which turning leaves whole) wins,
    and the fine detail of the two is compared at that alignment."""
    d = pair_distances(hashes_a, hashes_b)
    if d.min() <= hash_radius:
        combos = list(zip(*np.nonzero(d <= d.min() + slack)))
    else:
        combos = [(0, 0, t) for t in range(8)]
    best = (-2.0, 0, 0, 0, 0)
    for i, j, t in combos:
        a = thumbs_a[int(i)].astype(np.float64)[_DISK]
        b = Image.fromarray(np.ascontiguousarray(dihedral(thumbs_b[int(j)], int(t))))
        for angle in ANGLES:
            turned = np.asarray(b.rotate(angle, resample=Image.Resampling.BILINEAR) if angle else b, np.float64)
            best = max(best, (_correlation(a, turned[_DISK]), int(i), int(j), int(t), angle))
    corr, i, j, t, angle = best
    b = Image.fromarray(np.ascontiguousarray(dihedral(thumbs_b[j], t)))
    turned = np.asarray(b.rotate(angle, resample=Image.Resampling.BILINEAR) if angle else b, np.float64)
    fine = _correlation(detail(thumbs_a[i])[_DISK], detail(turned)[_DISK])
    amount = min(detail_amount(thumbs_a[i]), detail_amount(thumbs_b[j]))
    return Alignment(int(d.min()), corr, i, j, t, angle, fine, amount)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = np.linalg.norm(x) * np.linalg.norm(y)
    return float((x * y).sum() / denom) if denom > 0 else float(np.array_equal(x, y))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of uint64 arrays (broadcast)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    flat = np.ascontiguousarray(x.reshape(-1))
    return np.unpackbits(flat.view(np.uint8).reshape(-1, 8), axis=-1).sum(-1).reshape(x.shape)


FLIPS = (0, 1, 2, 3)  # none, left-right, top-bottom, both
# Rotate-and-crop augmentation (LC25000's Augmentor) turns by up to 25 degrees either way and keeps the inner square,
# so two copies of one original differ by up to 50 degrees and by a zoom down to the inner square at 25 degrees.
RELATIVE_ANGLES = tuple(float(a) for a in np.arange(-50, 50.1, 2.5))
RELATIVE_ZOOMS = (0.74, 0.8, 0.86, 0.93, 1.0)


def inner_square(theta: float) -> float:
    """The side of the largest square inside a square turned by ``theta`` degrees, as a share of its side (what
    rotate-and-crop augmentation keeps, then enlarges back)."""
    t = np.radians(abs(theta))
    return float(1.0 / (np.cos(t) + np.sin(t)))


def disk(side: int, radius: float = 0.35) -> np.ndarray:
    """(side, side) bool: the central disk of ``radius`` x side, which turning leaves whole."""
    yy, xx = np.mgrid[:side, :side]
    return (yy - (side - 1) / 2) ** 2 + (xx - (side - 1) / 2) ** 2 <= (radius * side) ** 2


def warp_matrix(flip: int, angle: float, zoom: float, side: int, mask: np.ndarray, src: int = THUMB_SIDE):
    """A sparse (mask.sum(), src * src) matrix that samples, bilinearly, the pixels ``mask`` of a ``side`` px view of
    a ``src`` px thumbnail flipped (bits: 1 left-right, 2 top-bottom), turned by ``angle`` degrees and zoomed in to
    the central ``zoom`` share of its side: ``matrix @ thumb.ravel()`` is that view, for one image or many columns.
    Within the central disk (``mask``) and ``zoom <= 1`` no sample leaves the thumbnail."""
    from scipy.sparse import csr_matrix

    v, u = np.nonzero(mask)
    p = np.stack([(u + 0.5) / side - 0.5, (v + 0.5) / side - 0.5]) * zoom
    t = np.radians(angle)
    x, y = np.cos(t) * p[0] - np.sin(t) * p[1], np.sin(t) * p[0] + np.cos(t) * p[1]
    x, y = (x + 0.5) * src - 0.5, (y + 0.5) * src - 0.5
    if flip & 1:
        x = src - 1 - x
    if flip & 2:
        y = src - 1 - y
    x, y = np.clip(x, 0, src - 1.001), np.clip(y, 0, src - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    rows = np.repeat(np.arange(len(u)), 4)
    cols = np.stack([y0 * src + x0, y0 * src + x0 + 1, (y0 + 1) * src + x0, (y0 + 1) * src + x0 + 1], 1).ravel()
    vals = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1).ravel()
    return csr_matrix((vals, (rows, cols)), shape=(len(u), src * src))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (their inner products are correlations). (N, P) -> (N, P) float32."""
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
