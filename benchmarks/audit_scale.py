"""How long ``medvlkit audit`` takes at 10,000 and 100,000 images on this machine, next to embedding the same images
with ``lite`` (the cost every other verb pays once), run by hand.

The images are synthetic but made of real pixels: each is a 2 x 2 mosaic of four random 112 px tiles cut from the
real 224 px images in ``$MEDVLKIT_DATA`` (brain MRI, Kermany chest X-rays, LC25000, fundus, BUSI, adult chest
X-rays), so they are distinct as real images are; 1% are then planted as copies of another mosaic (resized to
180-260 px, cropped up to 4% a side, flipped or rotated by a multiple of 90 degrees with probability 1/2, JPEG
quality 70-95). Each planted copy is recorded, so the run also reports the audit's recall of them.
80% of the images are ``train``, 20% ``test`` (two classes, at random).

Usage (each step prints its wall seconds and images per second):
    MEDVLKIT_DATA=../shared/data python benchmarks/audit_scale.py make  --n 10000 --work /tmp/audit-scale
    python benchmarks/audit_scale.py audit --n 10000 --work /tmp/audit-scale   # medvlkit audit, no model
    python benchmarks/audit_scale.py embed --n 10000 --work /tmp/audit-scale   # lite embeddings alone, no cache
The ratio quoted in the README is audit / embed, both timed as whole processes on the same machine in one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

SOURCES = ("brain_tumor_mri", "chest_xray_pneumonia", "lung_histopathology_lc25000", "fundus_eye_diseases",
           "busi_breast_ultrasound", "cxr_covid_radiography_adult")
PLANTED = 0.01


def _sources(data_root: Path) -> list[Path]:
    files = []
    for name in SOURCES:
        files += sorted(p for p in (data_root / name).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images under {data_root}: set MEDVLKIT_DATA")
    return files


def make(n: int, work: Path, data_root: Path) -> None:
    from PIL import Image, ImageOps

    rng = random.Random(0)
    files = _sources(data_root)
    folder = work / f"n{n}"
    split_of = ["train" if rng.random() < 0.8 else "test" for _ in range(n)]
    cls_of = [rng.choice("ab") for _ in range(n)]
    paths = [folder / split_of[i] / cls_of[i] / f"img{i:06d}.jpg" for i in range(n)]
    for p in {p.parent for p in paths}:
        p.mkdir(parents=True, exist_ok=True)
    planted = set(rng.sample(range(n), int(PLANTED * n)))
    made, copies, t0 = [], [], time.perf_counter()
    for i in range(n):
        if i in planted and made:
            j = rng.choice(made)
            im = Image.open(paths[j]).convert("RGB")
            side = rng.randint(180, 260)
            im = im.resize((side, side), Image.Resampling.BILINEAR)
            c = int(side * rng.uniform(0, 0.04))
            im = im.crop((c, c, side - c, side - c))
            if rng.random() < 0.5:
                im = ImageOps.mirror(im) if rng.random() < 0.5 else im.rotate(90 * rng.randint(1, 3), expand=True)
            im.save(paths[i], quality=rng.randint(70, 95))
            copies.append(json.dumps([str(paths[j]), str(paths[i])]))
            continue
        mosaic = Image.new("RGB", (224, 224))
        for k in range(4):
            tile = Image.open(rng.choice(files)).convert("RGB").resize((224, 224))
            x, y = rng.choice((0, 112)), rng.choice((0, 112))
            mosaic.paste(tile.crop((x, y, x + 112, y + 112)), ((k % 2) * 112, (k // 2) * 112))
        mosaic.save(paths[i], quality=90)
        made.append(i)
    (folder / "planted.jsonl").write_text("".join(c + "\n" for c in copies))
    print(f"made {n} images in {folder} ({len(planted)} planted copies) in {time.perf_counter() - t0:.0f} s")


def audit(n: int, work: Path, workers: int) -> None:
    from medvlkit.engine.options import RunOptions
    from medvlkit.tasks.dataaudit import AuditConfig, run_audit

    folder, out = work / f"n{n}", work / f"audit{n}"
    t0 = time.perf_counter()
    result = run_audit(AuditConfig(str(folder), bootstrap=200), out, run=RunOptions(workers=workers, progress=False))
    seconds = time.perf_counter() - t0
    found = {frozenset((p["file_a"], p["file_b"])) for p in result["pairs"]}
    planted = [frozenset(json.loads(line)) for line in (folder / "planted.jsonl").read_text().splitlines()]
    recall = sum(p in found for p in planted) / max(1, len(planted))
    print(f"audit: {n} images in {seconds:.1f} s ({n / seconds:.0f} img/s); pairs {len(found)}; planted copies "
          f"found {recall:.3f} of {len(planted)}")


def embed(n: int, work: Path, workers: int) -> None:
    from medvlkit.data import load_dataset
    from medvlkit.engine.features import embed_images
    from medvlkit.models import create_model
    from medvlkit.tasks.dataaudit.run import combine

    folder = work / f"n{n}"
    ds, _ = combine([(s, load_dataset(folder, split=s)) for s in ("train", "test")])
    model = create_model("lite")
    t0 = time.perf_counter()
    emb = embed_images(model, ds, batch_size=64, num_workers=workers, cache=False, progress=False)
    seconds = time.perf_counter() - t0
    print(f"embed (lite): {len(emb.items)} images in {seconds:.1f} s ({n / seconds:.0f} img/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("make", "audit", "embed"))
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/audit-scale"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.step == "make":
        make(args.n, args.work, Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")))
    elif args.step == "audit":
        audit(args.n, args.work, args.workers)
    else:
        embed(args.n, args.work, args.workers)


if __name__ == "__main__":
    main()
