"""Sanity checks of ``medvlkit explain`` (run by hand), after Adebayo et al. (NeurIPS 2018) and RISE's
deletion/insertion metrics (Petsiuk et al., BMVC 2018), with ``lite`` on Kermany chest X-ray test images.

For each of ``--n`` test images (half NORMAL, half PNEUMONIA, the first of each folder), the explained class is the
model's zero-shot prediction under the ``pneumonia`` prompt set, and its probability is the score.

1. Model-parameter randomisation: the top of the image tower (the last 1x1 convolution + batch norm, ``_conv_head``
   and ``_bn1``, and the image projection head) is re-initialised (seed 0); the Spearman rank correlation between each
   image's original and randomised Grad-CAM map (on the 224 x 224 view) is reported (mean, 95% bootstrap CI). Maps
   that barely change would describe the input, not the model.
2. Deletion / insertion: the view is cut into 28 x 28 blocks of 8 x 8 px, ordered by the map's mean per block (most
   salient first) or at random (seeded); ``--steps`` times a share of the blocks is removed (set to the normalised
   zero, the mean grey) or inserted (into a blurred copy); AUC = mean score over the steps. A faithful map gives a
   lower deletion AUC and a higher insertion AUC than random order (paired bootstrap 95% CIs of the differences).

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/explain_sanity.py [--n 60] [--steps 16]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _boot(values: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(n)]
    return tuple(np.percentile(means, [2.5, 97.5]))


def _curve(model, view: torch.Tensor, order: np.ndarray, target: int, cv, steps: int, insert: bool,
           blurred: torch.Tensor) -> float:
    """Mean probability of ``target`` as blocks (in ``order``) are removed from / inserted into the view."""
    grid, block = 28, 8
    images = []
    for s in range(steps + 1):
        k = round(len(order) * s / steps)
        mask = torch.zeros(grid * grid)
        mask[torch.from_numpy(order[:k].copy())] = 1
        mask = mask.reshape(1, 1, grid, grid).repeat_interleave(block, 2).repeat_interleave(block, 3)[0]
        images.append(blurred * (1 - mask) + view * mask if insert else view * (1 - mask))
    with torch.no_grad():
        emb = model.encode_image(torch.stack(images)).float().numpy()
    probs = np.exp(cv.log_probs(emb, model.logit_scale))[:, target]
    return float(np.mean(probs))


def main() -> None:
    from scipy.stats import spearmanr

    from medvlkit import create_model, load_dataset
    from medvlkit.data.prompts import load_prompt_set
    from medvlkit.tasks.explain import heatmaps, targets_from_vectors
    from medvlkit.tasks.zeroshot import class_vectors

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--target", default="log_prob", help="log_prob or similarity (see medvlkit.tasks.explain)")
    args = ap.parse_args()
    root = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data")) / "chest_xray_pneumonia"
    ds = load_dataset(root, split="test")
    per_class = args.n // 2
    picks = [i for c in range(len(ds.classnames)) for i in np.flatnonzero(ds.labels[:, c] == 1)[:per_class]]
    model = create_model("lite")
    prompts = load_prompt_set("pneumonia").select(ds.classnames)
    cv = class_vectors(model, prompts, cache=False)
    targets = targets_from_vectors(cv, model.logit_scale, args.target)
    pre = model.image_preprocessor
    views = torch.stack([pre.normalize(pre.to_uint8(ds.load_image(int(i)))) for i in picks])
    with torch.no_grad():
        predicted = np.exp(cv.log_probs(model.encode_image(views).float().numpy(), model.logit_scale)).argmax(1)
    maps = np.stack([heatmaps(model, views[i:i + 1], targets)[0][0, predicted[i]] for i in range(len(picks))])

    random_model = create_model("lite")
    torch.manual_seed(0)
    tower = random_model.image_tower
    for module in (tower._conv_head, tower._bn1, *random_model.heads.image_head.modules()):
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    random_maps = np.stack([heatmaps(random_model, views[i:i + 1], targets)[0][0, predicted[i]]
                            for i in range(len(picks))])
    rho = np.array([spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(maps, random_maps)])
    rho = np.nan_to_num(rho)  # a constant map has no rank correlation: counted as 0
    lo, hi = _boot(rho)
    print(f"target {args.target}; lite, {len(picks)} Kermany test X-rays ({per_class} per class), explained class = "
          f"the zero-shot prediction ({int((predicted == ds.labels[picks].argmax(1)).sum())} correct)")
    print(f"randomisation test (top of the image tower re-initialised): Spearman rank correlation of the maps, mean "
          f"{rho.mean():.3f} (95% CI {lo:.3f} .. {hi:.3f}), median {np.median(rho):.3f}")

    blurred = F.avg_pool2d(F.pad(views, (15, 15, 15, 15), mode="reflect"), 31, stride=1)
    rng = np.random.default_rng(0)
    auc = {k: [] for k in ("deletion saliency", "deletion random", "insertion saliency", "insertion random")}
    for i in range(len(picks)):
        block_means = maps[i].reshape(28, 8, 28, 8).mean(axis=(1, 3)).ravel()
        orders = {"saliency": np.argsort(-block_means, kind="stable"), "random": rng.permutation(28 * 28)}
        for kind in ("deletion", "insertion"):
            for name, order in orders.items():
                auc[f"{kind} {name}"].append(_curve(model, views[i], order, int(predicted[i]), cv, args.steps,
                                                    kind == "insertion", blurred[i]))
    for kind in ("deletion", "insertion"):
        s, r = np.array(auc[f"{kind} saliency"]), np.array(auc[f"{kind} random"])
        lo_s, hi_s = _boot(s)
        lo_r, hi_r = _boot(r)
        lo_d, hi_d = _boot(s - r)
        print(f"{kind} AUC (mean P(predicted class) over {args.steps} steps): saliency order {s.mean():.3f} "
              f"({lo_s:.3f} .. {hi_s:.3f}), random order {r.mean():.3f} ({lo_r:.3f} .. {hi_r:.3f}); saliency - random "
              f"{(s - r).mean():+.3f} (95% CI {lo_d:+.3f} .. {hi_d:+.3f})")


if __name__ == "__main__":
    main()
