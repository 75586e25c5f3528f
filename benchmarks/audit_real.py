"""What ``medvlkit audit`` finds in the real data, and what it changes in a number a user would publish, run by
hand (about 15 minutes on 2 CPU cores, embeddings cached after the first run). Every figure of the README's audit
section comes from here.

1. ``brain_tumor_mri``: the audit (no model), then a ``lite`` linear probe scored on the public test split, trained
   on all of train, and again with ``--exclude`` (the train copies of test images left out).
2. ``lung_histopathology_lc25000``: the audit with ``--augmented`` (rotate-and-crop / flip copies); its families
   of copies; then a ``lite`` probe under five seeded 70/10/20 splits made per image and made per family
   (``holdout_indices`` with the families as groups): the gap is the leak a per-image split hides.
3. ``cxr_covid_radiography_adult`` and ``fundus_eye_diseases``: the shortcut check with ``--model lite``.
4. ``chest_xray_pneumonia`` (Kermany): patients found in both train and test from the file names.
5. ``busi_breast_ultrasound`` (no split): repeated scans of one lesion, as families of near-duplicates.

Usage: MEDVLKIT_DATA=../shared/data python benchmarks/audit_real.py --work /tmp/audit-real
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np

from medvlkit.apps.cli import main as cli

KERMANY_PATIENT = r"(person\d+_(?:bacteria|virus)|NORMAL2-IM-\d+|IM-\d+)"  # person ids count per subtype
KERMANY_NAIVE = r"(person\d+|NORMAL2-IM-\d+|IM-\d+)"  # what the README probe uses to group; merges two counters


def run(*argv: str) -> None:
    rc = cli([str(a) for a in argv])
    if rc != 0:
        raise SystemExit(f"medvlkit {' '.join(map(str, argv))} exited {rc}")


def metrics(folder: Path) -> dict:
    r = json.loads((folder / "result.json").read_text())
    m, ci = r["metrics"], r["ci"]
    return {k: [round(m[k], 4)] + [round(x, 4) for x in ci.get(k, [])] for k in ("accuracy", "auroc")} | {
        "n_test": m["n"], "n_train": r["probe"]["n_train"], "n_val": r["probe"]["n_val"],
        "excluded_by_audit": r["probe"]["excluded_by_audit"]}


def brain(data: Path, work: Path) -> dict:
    d = data / "brain_tumor_mri"
    run("audit", "--data", d, "--out", work / "brain-audit", "--overwrite", "-q")
    audit = json.loads((work / "brain-audit" / "audit.json").read_text())
    common = ["probe", "--data", d, "-q", "--overwrite"]
    run(*common, "--out", work / "brain-probe")
    run(*common, "--exclude", work / "brain-audit", "--out", work / "brain-probe-excluded")
    cross = [p for p in audit["pairs"] if p["cross_split"]]
    return {"summary": audit["summary"], "cross_split_test_images": len({p["file_a"] if p["split_a"] == "test"
                                                                        else p["file_b"] for p in cross}),
            "probe": metrics(work / "brain-probe"), "probe_excluded": metrics(work / "brain-probe-excluded")}


def lc25000(data: Path, work: Path, seeds: int = 5) -> dict:
    from medvlkit import create_model
    from medvlkit.data import load_dataset
    from medvlkit.data.splits import holdout_indices
    from medvlkit.tasks.evaluate import evaluate_probs
    from medvlkit.tasks.probe import LinearProbe, embed_split

    d = data / "lung_histopathology_lc25000"
    run("audit", "--data", d, "--augmented", "--out", work / "lc-audit", "--overwrite", "-q")
    audit = json.loads((work / "lc-audit" / "audit.json").read_text())
    ds = load_dataset(d)
    emb = embed_split(create_model("lite"), ds, progress=False)
    family = {f: f"family{fam['family']}" for fam in audit["families"] for files in fam["splits"].values()
              for f in files}
    groups = [family.get(item, item) for item in emb.items]
    rows = {}
    for name, g in (("per_image", list(emb.items)), ("per_family", groups)):
        scores = []
        for seed in range(seeds):
            rest, test = holdout_indices(emb.items, emb.Y, 0.2, seed, None, g)
            tr, va = holdout_indices([emb.items[i] for i in rest], emb.Y[rest], 0.125, seed, None,
                                     [g[i] for i in rest])
            tr, va = rest[tr], rest[va]
            probe = LinearProbe(random_state=seed).fit(emb.X[tr], emb.Y[tr], ds.classnames, False, emb.X[va],
                                                       emb.Y[va])
            ev = evaluate_probs(emb.Y[test], None, ds.classnames, False, 1000 if seed == 0 else 0, seed,
                                log_probs=probe.predict_log_proba(emb.X[test]))
            leaked = sum(groups[i] in {groups[j] for j in tr} for i in test)
            scores.append({"accuracy": ev.metrics["accuracy"], "auroc": ev.metrics["auroc"], "n_test": len(test),
                           "test_images_with_a_family_member_in_train": leaked}
                          | ({"ci": {k: ev.ci[k] for k in ("accuracy", "auroc")}} if seed == 0 else {}))
        rows[name] = {"seeds": scores, "mean_accuracy": float(np.mean([s["accuracy"] for s in scores])),
                      "mean_auroc": float(np.mean([s["auroc"] for s in scores]))}
    sizes = [f["size"] for f in audit["families"]]
    return {"summary": audit["summary"], "family_sizes": {str(k): sizes.count(k) for k in sorted(set(sizes))},
            "images": len(ds), "probe": rows}


def shortcuts(data: Path, work: Path) -> dict:
    out = {}
    for name in ("cxr_covid_radiography_adult", "fundus_eye_diseases"):
        run("audit", "--data", data / name, "--model", "lite", "--out", work / f"{name}-audit", "--overwrite", "-q")
        audit = json.loads((work / f"{name}-audit" / "audit.json").read_text())
        out[name] = {"summary": audit["summary"], "shortcuts": audit["shortcuts"]}
    return out


def kermany(data: Path, work: Path) -> dict:
    run("audit", "--data", data / "chest_xray_pneumonia", "--group-pattern", KERMANY_PATIENT, "--out",
        work / "kermany-audit", "--overwrite", "-q")
    audit = json.loads((work / "kermany-audit" / "audit.json").read_text())
    leaks = audit["group_leaks"]
    # The same files grouped by the naive id (person number alone), without reading pixels: every "patient" it finds
    # in both splits pairs a bacterial number with a viral one; within train, 808 numbers carry both subtypes.
    from medvlkit.engine.options import DataOptions
    from medvlkit.tasks.dataaudit.run import combine, group_leaks, load_splits

    ds, split_of = combine(load_splits(str(data / "chest_xray_pneumonia"), DataOptions()))
    naive = group_leaks(ds, split_of, KERMANY_NAIVE)
    subtypes: dict[str, set] = {}
    for item, split in zip(ds.items, split_of):
        m = re.match(r"person(\d+)_(bacteria|virus)", Path(item).name)
        if m and split == "train":
            subtypes.setdefault(m.group(1), set()).add(m.group(2))
    return {"summary": audit["summary"], "pattern": KERMANY_PATIENT, "patients_in_two_splits": len(leaks),
            "images": {s: sum(len(g["images"].get(s, [])) for g in leaks) for s in ("train", "val", "test")},
            "naive_pattern": KERMANY_NAIVE, "naive_patients_in_two_splits": len(naive),
            "naive_leaks_pairing_bacteria_with_virus": sum(
                1 for g in naive if {"bacteria", "virus"} <= {n for files in g["images"].values() for f in files
                                                              for n in ("bacteria", "virus") if n in Path(f).name}),
            "train_person_numbers_with_both_subtypes": sum(len(v) == 2 for v in subtypes.values())}


def busi(data: Path, work: Path) -> dict:
    """BUSI has no split: the audit's job there is the repeated scans of one lesion (families within a class)."""
    run("audit", "--data", data / "busi_breast_ultrasound", "--out", work / "busi-audit", "--overwrite", "-q")
    audit = json.loads((work / "busi-audit" / "audit.json").read_text())
    sizes = [f["size"] for f in audit["families"]]
    return {"summary": audit["summary"], "family_sizes": {str(k): sizes.count(k) for k in sorted(set(sizes))},
            "label_conflicts": [p for p in audit["pairs"] if p["label_conflict"]][:10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/audit-real"))
    parser.add_argument("--only", default="brain,lc25000,shortcuts,kermany,busi")
    args = parser.parse_args()
    data = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data"))
    args.work.mkdir(parents=True, exist_ok=True)
    steps = {"brain": brain, "lc25000": lc25000, "shortcuts": shortcuts, "kermany": kermany, "busi": busi}
    for name in args.only.split(","):
        result = steps[name](data, args.work)
        (args.work / f"{name}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(name, json.dumps(result, indent=1, default=float)[:3000])


if __name__ == "__main__":
    main()
