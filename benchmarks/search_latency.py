"""Latency of similar-case search by text over a prebuilt index (run by hand).

Build the index first (its time is printed by the command):
    medvlkit index --data ../shared/data --recursive --out runs/index-all
Then:
    python benchmarks/search_latency.py runs/index-all [--model lite]
Prints the median and 90th percentile of 20 text queries (text encoding + FAISS top-10), in process with the
model loaded, and the wall time of one cold `medvlkit search` call (process start, model load, query).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

from medvlkit import create_model
from medvlkit.tasks.search import load_index, query_vectors

QUERIES = ["right lower lobe pneumonia", "normal chest x-ray", "axial CT of the abdomen", "MRI of the brain",
           "a photo of a bee", "pleural effusion", "ring-enhancing brain lesion", "fracture of the femur",
           "liver mass on CT", "bilateral interstitial opacities", "a photo of an ant on a leaf", "kidney stone",
           "sagittal MRI of the spine", "pediatric chest radiograph", "aortic dissection", "lung nodule",
           "coronal CT of the chest", "hydrocephalus", "consolidation in the left lung", "bowel obstruction"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("--model", default="lite")
    args = ap.parse_args()
    idx = load_index(args.index)
    model = create_model(args.model)
    idx.check_model(model)
    idx.search(query_vectors(model, ["warm-up"]), 10)
    times = []
    for q in QUERIES:
        t0 = time.perf_counter()
        idx.search(query_vectors(model, [q]), 10)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    print(f"index: {len(idx.files)} images, dim {idx.meta['embed_dim']}")
    print(f"in-process text query + top-10: median {np.median(ms):.1f} ms, p90 {np.percentile(ms, 90):.1f} ms "
          f"over {len(QUERIES)} queries")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medvlkit.apps.cli", "search", "--index", args.index, "--text", QUERIES[0],
                    "--model", args.model, "--json"], check=True, capture_output=True)
    print(f"cold `medvlkit search` call (process + model load + query): {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
