"""The training manifest of ``lite``: decoded-pixel hashes of every image its heads were trained on.

``medvlkit pretrain`` writes it into ``best/`` beside the heads (the shipped copy is
``models/weights/lite_training_images.txt.gz``); :mod:`medvlkit.engine.seen` reads it so that no validation or test
number is computed on those images without saying so. It lists the train part of the corpus (:func:`build_corpus`), each
image once (a greyscale view is the same image); the validation part only chose the checkpoint and is not listed.

Rebuild the shipped file alone (a few seconds; the same bytes as a full ``pretrain`` run writes)::

    python -m medvlkit.tasks.pretrain.manifest --data-root ../shared/data --out src/medvlkit/models/weights
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.items import split_view
from medvlkit.engine.seen import pixel_hashes
from medvlkit.errors import MedvlkitError
from medvlkit.models.lite import TRAINING_MANIFEST
from medvlkit.models.training_data import write_pixel_manifest
from medvlkit.tasks.pretrain.corpus import Pair, build_corpus

SOURCE_NAMES = {"cxr": "chest_xray_pneumonia train minus the validation patients",
                "pneumoniamnist": "medmnist/pneumoniamnist.npz train", "medpix": "medpix2 train",
                "retina": "medmnist/retinamnist.npz train",
                "photo": "natural/hymenoptera train and natural/cifar10_test_first846.npz images 0-499"}


def write_manifest(pairs: list[Pair], folder: str | Path, num_workers: int = 0, progress: bool = True) -> Path:
    """Hash the images of ``pairs`` (the corpus's train part) and write ``folder/lite_training_images.txt.gz``.

    Raises:
        MedvlkitError: an image cannot be read (a manifest missing images would under-report).
    """
    base = {split_view(p.item)[0]: p.source for p in pairs}
    items = sorted(base)
    hashes = pixel_hashes(ImageDataset(items=items, name="lite pretraining corpus"), num_workers, progress)
    missing = [item for item, h in zip(items, hashes) if not h]
    if missing:
        raise MedvlkitError(f"{len(missing)} pretraining image(s) could not be read (first: {missing[0]}); the "
                            "manifest would be incomplete")
    counts = Counter(base[i] for i in items)
    lines = [f"{SOURCE_NAMES.get(s, s)}: {n} images" for s, n in sorted(counts.items())]
    lines.append(f"{len(set(hashes))} distinct decoded images of {len(items)} files (identical pixels listed once)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return write_pixel_manifest(folder / TRAINING_MANIFEST, hashes, lines)


def write_training_manifest(data_root: str | Path, folder: str | Path, sources: list[str] | None = None,
                            num_workers: int = 0, progress: bool = True) -> Path:
    """:func:`write_manifest` of the train part of the corpus in ``data_root`` (what ``pretrain`` trains on)."""
    return write_manifest(build_corpus(Path(data_root), "train", sources), folder, num_workers, progress)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", required=True, help="folder to write lite_training_images.txt.gz into")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    print(write_training_manifest(args.data_root, args.out, num_workers=args.workers))


if __name__ == "__main__":
    main()
