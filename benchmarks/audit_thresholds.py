"""Where the audit's near-duplicate thresholds come from (run by hand): copies of real images against different
images that look alike, on the measures the audit uses.

For each real set below, from a seeded sample of its images:
- **copies**: each sampled image resized to half and re-encoded as JPEG (quality 60), cropped 5% and 10% a side,
  rotated 90 degrees, rotated 10 degrees (and cropped to drop the corners), flipped and re-encoded (quality 75);
  the smallest perceptual-hash distance to its original over crops and transforms, and the aligned 64 px thumbnail
  correlation (``medvlkit.tasks.dataaudit.hashes.best_alignment``);
- **look-alikes**: every pair of different files of the set whose hashes lie within the audit's radius (7), with the
  same correlation. These include the set's real duplicates (the audit's job is to find them), so their upper
  percentiles are not errors: look at the pairs (``medvlkit audit`` + ``medvlkit report``) to tell.

It prints, per set, the copies' hash distance (max) and correlation (min, 1st, 5th percentile), and the look-alikes'
correlation percentiles with how many pass each candidate threshold.

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/audit_thresholds.py [--n 80]
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from medvlkit import load_dataset
from medvlkit.tasks.dataaudit.hashes import best_alignment, detail_amount, fingerprint
from medvlkit.tasks.dataaudit.pairs import MIN_DETAIL, NEAR_THRESHOLD, hash_candidates

SETS = {"fundus photographs": "fundus_eye_diseases", "adult chest films": "cxr_covid_radiography_adult",
        "Kermany test": "chest_xray_pneumonia/test", "BUSI": "busi_breast_ultrasound",
        "brain MRI test": "brain_tumor_mri/test",
        "LC25000": "lung_histopathology_lc25000"}
THRESHOLDS = (0.97, 0.98, 0.985, 0.99, 0.995)


def copy_of(image: Image.Image, kind: str) -> Image.Image:
    w, h = image.size
    buf = io.BytesIO()
    if kind == "resize+jpeg60":
        image.convert("RGB").resize((w // 2, h // 2)).save(buf, "JPEG", quality=60)
        return Image.open(buf)
    if kind == "flip+jpeg75":
        image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buf, "JPEG", quality=75)
        return Image.open(buf)
    if kind == "rot90":
        return image.rotate(90, expand=True)
    if kind == "rot10":  # as augmentation tools do: turned a little, corners filled by the image itself
        return image.rotate(10, resample=Image.Resampling.BICUBIC).crop((w // 8, h // 8, w - w // 8, h - h // 8))
    c = int({"crop5%": 0.05, "crop10%": 0.10}[kind] * w)
    return image.crop((c, c, w - c, h - c))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=80, help="images per set made into copies")
    args = ap.parse_args()
    root = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data"))
    for name, folder in SETS.items():
        ds = load_dataset(root / folder)
        prints = [fingerprint(ds.load_image(i)) for i in range(len(ds))]
        hashes, thumbs = np.stack([p[1] for p in prints]), np.stack([p[2] for p in prints])
        dists, corrs, fine, per_kind = [], [], [], {}
        for i in np.random.default_rng(0).permutation(len(ds))[:args.n]:
            for kind in ("resize+jpeg60", "crop5%", "crop10%", "rot90", "rot10", "flip+jpeg75"):
                _, h, t = fingerprint(copy_of(ds.load_image(int(i)), kind))
                al = best_alignment(h, hashes[i], t, thumbs[i])
                dists.append(al.distance)
                corrs.append(al.correlation)
                if al.detail >= MIN_DETAIL and kind != "rot10":  # rot10 crops 12.5% a side: beyond the 10% designed
                    fine.append(al.detail_correlation)
                per_kind.setdefault(kind, []).append(al.correlation)
        print(f"{name} ({len(ds)} images): copies ({len(corrs)}) hash distance max {max(dists)}, correlation min "
              f"{min(corrs):.4f}, 1st pct {np.percentile(corrs, 1):.4f}, 5th pct {np.percentile(corrs, 5):.4f}; "
              f"fine-detail correlation (not rot10, detail >= {MIN_DETAIL}) min {min(fine):.4f}")
        print("   copies' correlation min by kind: " + ", ".join(f"{k} {min(v):.3f}" for k, v in per_kind.items()))
        aligned = [best_alignment(hashes[a], hashes[b], thumbs[a], thumbs[b])
                   for a, b in sorted(hash_candidates(hashes))]
        look = np.array([al.correlation for al in aligned])
        if len(look):
            passing = ", ".join(f">= {t}: {int((look >= t).sum())}" for t in THRESHOLDS)
            print(f"   look-alike pairs within hash radius 7: {len(look)}; correlation pct [50, 90, 99] "
                  f"{np.percentile(look, [50, 90, 99]).round(4)}; {passing}")
            high = [al for al in aligned if al.correlation >= NEAR_THRESHOLD]
            plain = sum(al.detail < MIN_DETAIL for al in high)
            rest = [al.detail_correlation for al in high if al.detail >= MIN_DETAIL] or [np.nan]
            print(f"   of the {len(high)} at >= {NEAR_THRESHOLD}: {plain} too plain to confirm (detail < {MIN_DETAIL});"
                  f" fine-detail correlation of the rest pct [0, 5, 50] {np.percentile(rest, [0, 5, 50]).round(3)}")
        amounts = [detail_amount(t[0]) for t in thumbs]
        print(f"   images too plain to confirm (detail < {MIN_DETAIL}): {int(np.sum(np.array(amounts) < MIN_DETAIL))}")


if __name__ == "__main__":
    main()
