"""Numbers for the ``lite`` model card that the CLI verbs do not print directly (run by hand, not by CI):

- the medical-image gate on held-out images: test/val splits of the medical sets vs photos never used in
  pretraining (hymenoptera val, CIFAR-10 images 600-845);
- honest zero-shot on BreastMNIST (ultrasound, fully held out of pretraining): malignant vs benign, and
  whether its images are recognised as ultrasound among the modality prompts;
- PneumoniaMNIST test (28 px copies of the chest X-ray test images: a seen label space at another resolution);
- since v2: the test parts of the five sets split by ``lite_splits.csv.gz`` (brain MRI, BUSI, LC25000, fundus,
  adult chest films): each in the gate, and zero-shot with its prompt set (a label space v2 was trained on).

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/lite_card.py [--model lite] [--out runs/lite-card.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from medvlkit import create_model, embed_images, load_dataset, load_prompt_set
from medvlkit.tasks.evaluate import evaluate_probs
from medvlkit.tasks.gate import default_gate_threshold, medical_probability
from medvlkit.tasks.pretrain.splits import part_dataset
from medvlkit.tasks.pretrain.validate import SET_PROMPTS  # each new set's prompt set, as validation uses
from medvlkit.tasks.zeroshot import answer, class_vectors


def gate_sets(root: Path) -> dict[str, tuple[object, bool]]:
    """name -> (dataset, is_medical), all held out of pretraining."""
    cifar = load_dataset(root / "natural" / "cifar10_test_first846.npz")
    return {**{f"{name}/test part": (part_dataset(root, name, "test"), True) for name in SET_PROMPTS},
        "chest_xray_pneumonia/test": (load_dataset(root / "chest_xray_pneumonia", split="test"), True),
        "medpix2/test": (load_dataset(root / "medpix2", split="test"), True),
        "retinamnist/test": (load_dataset(root / "medmnist" / "retinamnist.npz", split="test"), True),
        "breastmnist/test (modality unseen)": (load_dataset(root / "medmnist" / "breastmnist.npz", split="test"), True),
        "pneumoniamnist/test": (load_dataset(root / "medmnist" / "pneumoniamnist.npz", split="test"), True),
        "hymenoptera/val": (load_dataset(root / "natural" / "hymenoptera", split="val"), False),
        "cifar10[600:846]": (cifar.subset(np.arange(600, 846)), False),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--out", default="runs/lite-card.json")
    args = ap.parse_args()
    root = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data"))
    model = create_model(args.model)
    thr = default_gate_threshold(model)
    report: dict = {"model": args.model, "gate_threshold": thr, "gate": {}}
    correct = total = 0
    per_side = {True: [], False: []}
    for name, (ds, medical) in gate_sets(root).items():
        emb = embed_images(model, ds, progress=False, num_workers=2)
        p = medical_probability(model, emb.vectors)
        ok = (p >= thr) == medical
        report["gate"][name] = {"n": int(len(ok)), "accuracy": float(ok.mean())}
        correct, total = correct + int(ok.sum()), total + len(ok)
        per_side[medical].append(ok)
        if name.startswith("breastmnist"):
            breast, breast_emb = ds, emb
        if name.startswith("pneumoniamnist"):
            pm, pm_emb = ds, emb
        if name.endswith("/test part"):
            key = name.split("/")[0]
            sp = load_prompt_set(SET_PROMPTS[key])
            res = answer(emb.vectors, class_vectors(model, sp), model.logit_scale, ds.classnames)
            ev = evaluate_probs(ds.labels[emb.indices], res.probs, ds.classnames, False, 1000, 0)
            report.setdefault("zeroshot_test_parts", {})[key] = {
                "n": int(len(emb.indices)), "prompts": SET_PROMPTS[key],
                **{k: [ev.metrics[k], *ev.ci[k]] for k in ("auroc", "accuracy", "balanced_accuracy")}}
    report["gate"]["overall_accuracy"] = correct / total
    report["gate"]["balanced_accuracy"] = float(np.mean([np.concatenate(v).mean() for v in per_side.values()]))
    report["gate"]["n"] = total

    ps = load_prompt_set("breast_ultrasound")
    probs = answer(breast_emb.vectors, class_vectors(model, ps), model.logit_scale, breast.classnames).probs
    ev = evaluate_probs(breast.labels[breast_emb.indices], probs, breast.classnames, False, 1000, 0)
    report["breastmnist_zeroshot"] = {k: ev.metrics[k] for k in ("auroc", "accuracy", "balanced_accuracy")}
    report["breastmnist_zeroshot_ci"] = {k: ev.ci[k] for k in ("auroc", "accuracy", "balanced_accuracy")}
    mod = load_prompt_set("modality")
    pred = answer(breast_emb.vectors, class_vectors(model, mod), model.logit_scale).probs.argmax(1)
    report["breastmnist_modality"] = {c: float(np.mean(pred == i)) for i, c in enumerate(mod.classnames)}

    pneu = answer(pm_emb.vectors, class_vectors(model, load_prompt_set("pneumonia")), model.logit_scale, pm.classnames)
    ev = evaluate_probs(pm.labels[pm_emb.indices], pneu.probs, pm.classnames, False, 1000, 0)
    report["pneumoniamnist_zeroshot"] = {k: ev.metrics[k] for k in ("auroc", "accuracy")}
    report["pneumoniamnist_zeroshot_ci"] = {k: ev.ci[k] for k in ("auroc", "accuracy")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
